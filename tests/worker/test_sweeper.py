"""The sweeper repairs what crashes and lost messages leave: unpublished jobs, expired leases, lost webhooks.

Messages land in the suite's real Redis DB; the test reads them back from the queue's list.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
import redis
from service_harness import isolated, queued_messages, wait_until
from sqlalchemy import text, update

from vidserve.db import session_factory
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.queue import GENERATE_TASK, WEBHOOK_QUEUE, make_celery, queue_for
from vidserve.schema import Job, JobStatus, WebhookDelivery
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from worker.sweeper import Sweeper


@pytest.fixture
def model() -> str:
    # A model of its own per test: its queue holds only what this test published.
    return f"sweeper-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return isolated(settings)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(settings.database_url, lambda job: job_to_dict(job, None))


@pytest.fixture
def sweeper(settings: Settings, store: JobStore) -> Iterator[Sweeper]:
    celery = make_celery(settings)
    yield Sweeper(store, celery, interval=0.1, max_attempts=2)
    celery.close()


def backdate(settings: Settings, job_id: uuid.UUID, **columns: str) -> None:
    """Move timestamps into the past, as if the job had sat there for a while."""
    sets = ", ".join(f"{name} = now() - interval '{ago}'" for name, ago in columns.items())
    with session_factory(settings.database_url)() as s, s.begin():
        s.execute(text(f"UPDATE jobs SET {sets} WHERE id = :id"), {"id": job_id})


def test_a_job_that_was_never_published_is_published(
    settings: Settings, store: JobStore, sweeper: Sweeper, model: str
) -> None:
    job = store.create(model=model, params={"prompt": "a cat"})  # stored, then the API died before publishing
    backdate(settings, job.id, updated_at="1 minute")

    assert sweeper.sweep_once().jobs_published >= 1
    assert queued_messages(settings, queue_for(model)) == [(GENERATE_TASK, [str(job.id), model])]
    assert store.get(job.id).published_at is not None
    sweeper.sweep_once()
    assert len(queued_messages(settings, queue_for(model))) == 1  # published once, not on every pass


def test_an_expired_lease_goes_back_to_the_queue_and_is_published_again(
    settings: Settings, store: JobStore, sweeper: Sweeper, model: str
) -> None:
    job = store.create(model=model, params={"prompt": "a cat"})
    store.mark_published(job.id)
    assert store.claim(job.id, "dead-worker/1", 60) is not None
    backdate(settings, job.id, lease_expires_at="1 second")

    sweeper.sweep_once()
    returned = store.get(job.id)
    assert returned.status == JobStatus.QUEUED and returned.lease_owner is None and returned.attempts == 1
    assert store.events(job.id)[-1].type == "job.requeued"
    assert store.events(job.id)[-1].detail == {"reason": "lease expired"}

    backdate(settings, job.id, updated_at="1 minute")
    sweeper.sweep_once()
    assert queued_messages(settings, queue_for(model)) == [(GENERATE_TASK, [str(job.id), model])]


def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(
    settings: Settings, store: JobStore, sweeper: Sweeper, model: str
) -> None:
    job = store.create(model=model, params={"prompt": "a cat"})
    for attempt in range(2):
        assert store.claim(job.id, f"dead-worker/{attempt}", 60) is not None
        backdate(settings, job.id, lease_expires_at="1 second")
        sweeper.sweep_once()
    failed = store.get(job.id)
    assert failed.status == JobStatus.FAILED and failed.error_code == "worker_lost" and failed.attempts == 2


def test_a_webhook_delivery_whose_message_was_lost_is_published_again(
    settings: Settings, store: JobStore, sweeper: Sweeper, model: str
) -> None:
    job = store.create(model=model, params={"prompt": "a cat"}, webhook_url="http://127.0.0.1:9/hook")
    store.claim(job.id, "worker/1", 60)  # records a job.running delivery; nobody publishes it
    with session_factory(settings.database_url)() as s, s.begin():
        (delivery_id,) = s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job.id)
            .values(created_at=text("now() - interval '5 minutes'"))
            .returning(WebhookDelivery.id)
        ).one()

    redis.Redis.from_url(settings.redis_url).delete(settings.redis_prefix + WEBHOOK_QUEUE)
    assert sweeper.sweep_once().deliveries_published >= 1
    assert str(delivery_id) in {args[0] for _task, args in queued_messages(settings, WEBHOOK_QUEUE)}


def test_the_checkpoints_of_ended_jobs_are_deleted_and_the_others_kept(
    settings: Settings, store: JobStore, model: str
) -> None:
    videos = VideoStore(dataclasses.replace(settings, s3_bucket=f"sweeper-{uuid.uuid4().hex[:12]}"))
    videos.ensure_bucket()
    jobs = [store.create(model=model, params={"prompt": "a cat"}) for _ in range(5)]
    queued, running, succeeded, failed, canceled = jobs
    for job in (running, succeeded, failed):
        store.claim(job.id, "worker/1", 60)
    store.succeed(succeeded.id, "worker/1", {"key": "videos/x.mp4"}, None)
    store.fail(failed.id, "worker_lost", "worker lost the job 3 times")  # as the sweeper fails it: no worker
    store.cancel(canceled.id)  # canceled while queued after an earlier attempt saved a checkpoint
    gone = uuid.uuid4()  # a job deleted since
    for job_id in (queued.id, running.id, succeeded.id, failed.id, canceled.id, gone):
        videos.put(VideoStore.checkpoint_key(str(job_id)), b"state", "application/octet-stream")
    celery = make_celery(settings)
    sweeper = Sweeper(store, celery, interval=0.1, max_attempts=2, videos=videos)

    assert sweeper.sweep_once().checkpoints_deleted == 4
    assert videos.checkpoint_job_ids() == sorted([str(queued.id), str(running.id)])
    assert sweeper.sweep_once().checkpoints_deleted == 0
    celery.close()


def test_the_sweeper_thread_runs_passes_until_stopped(
    settings: Settings, store: JobStore, sweeper: Sweeper, model: str
) -> None:
    job = store.create(model=model, params={"prompt": "a cat"})
    backdate(settings, job.id, updated_at="1 minute")
    sweeper.start()
    try:
        wait_until(lambda: store.get(job.id).published_at is not None, 10, what="the sweeper thread")
    finally:
        sweeper.stop()
    assert sweeper._thread is not None and not sweeper._thread.is_alive()
    with session_factory(settings.database_url)() as s:
        assert s.get(Job, job.id).status == JobStatus.QUEUED
