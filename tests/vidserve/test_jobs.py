"""JobStore: every allowed state change happens once, every refused one changes nothing, terminal is final.

Each change records a timeline event; a job with a webhook URL also gets a delivery row per webhook event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from vidserve.db import session_factory
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobConflict, JobNotFound, JobStore
from vidserve.schema import DeliveryStatus, Job, JobStatus, WebhookDelivery

PARAMS = {
    "prompt": "a fox",
    "num_frames": 9,
    "height": 32,
    "width": 32,
    "num_inference_steps": 4,
    "guidance_scale": 5.0,
    "seed": 1,
    "fps": 8,
}
OWNER = "worker-a"
HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def published() -> list[uuid.UUID]:
    return []


@pytest.fixture
def store(private_database: str, published: list[uuid.UUID]) -> JobStore:
    return JobStore(private_database, view=lambda job: job_to_dict(job, None), publish_delivery=published.append)


def _new(store: JobStore, webhook_url: str | None = None) -> Job:
    return store.create(model="tiny-wan", params=PARAMS, webhook_url=webhook_url, metadata={"k": "v"})


def _running(store: JobStore, webhook_url: str | None = None) -> Job:
    job = _new(store, webhook_url)
    assert store.claim(job.id, OWNER, 60) is not None
    return job


def _events(store: JobStore, job: Job) -> list[str]:
    return [event.type for event in store.events(job.id)]


@pytest.fixture
def deliveries(private_database: str) -> Callable[[Job], list[WebhookDelivery]]:
    """The webhook delivery rows of a job, oldest first."""

    def of(job: Job) -> list[WebhookDelivery]:
        query = select(WebhookDelivery).where(WebhookDelivery.job_id == job.id).order_by(WebhookDelivery.created_at)
        with session_factory(private_database)() as s:
            return list(s.scalars(query))

    return of


# ---- allowed changes ---------------------------------------------------------------------------------------


def test_create_stores_a_queued_job_and_records_job_queued(store: JobStore) -> None:
    job = _new(store)

    stored = store.get(job.id)
    assert stored.status == JobStatus.QUEUED
    assert stored.params == PARAMS and stored.client_metadata == {"k": "v"}
    assert stored.attempts == 0 and stored.progress == 0.0 and stored.published_at is None
    assert _events(store, job) == ["job.queued"]


def test_mark_published_sets_the_outbox_mark(store: JobStore) -> None:
    job = _new(store)

    store.mark_published(job.id)

    assert store.get(job.id).published_at is not None


def test_claim_makes_a_queued_job_running_under_a_lease(store: JobStore) -> None:
    job = _new(store)

    claimed = store.claim(job.id, OWNER, 60)

    assert claimed is not None and claimed.status == JobStatus.RUNNING
    assert claimed.attempts == 1 and claimed.lease_owner == OWNER
    assert claimed.lease_expires_at > claimed.started_at
    assert _events(store, job) == ["job.queued", "job.running"]


def test_a_second_claim_of_the_same_job_does_nothing(store: JobStore) -> None:
    job = _running(store)

    assert store.claim(job.id, "worker-b", 60) is None
    assert store.get(job.id).lease_owner == OWNER
    assert store.get(job.id).attempts == 1


def test_renew_lease_extends_it_for_the_owner_only(store: JobStore) -> None:
    job = _running(store)
    before = store.get(job.id).lease_expires_at

    assert store.renew_lease(job.id, OWNER, 600) is False
    assert store.get(job.id).lease_expires_at > before
    assert store.renew_lease(job.id, "worker-b", 600) is None


def test_set_progress_is_clamped_to_0_1_and_only_for_the_owner(store: JobStore) -> None:
    job = _running(store)

    assert store.set_progress(job.id, OWNER, 1.7) is False
    assert store.get(job.id).progress == 1.0
    assert store.set_progress(job.id, OWNER, 0.25) is False
    assert store.get(job.id).progress == 0.25
    assert store.set_progress(job.id, "worker-b", 0.5) is None
    assert store.get(job.id).progress == 0.25


def test_succeed_finishes_a_running_job_with_its_output(store: JobStore) -> None:
    job = _running(store)

    done = store.succeed(job.id, OWNER, {"key": "videos/x.mp4", "bytes": 10}, {"steps_computed": 4})

    assert done is not None and done.status == JobStatus.SUCCEEDED
    assert done.output["key"] == "videos/x.mp4" and done.stats == {"steps_computed": 4}
    assert done.progress == 1.0 and done.finished_at is not None and done.lease_owner is None
    assert _events(store, job) == ["job.queued", "job.running", "job.succeeded"]


def test_fail_finishes_a_running_job_with_its_error(store: JobStore) -> None:
    job = _running(store)

    failed = store.fail(job.id, "engine_error", "out of memory", owner=OWNER)

    assert failed is not None and failed.status == JobStatus.FAILED
    assert (failed.error_code, failed.error_message) == ("engine_error", "out of memory")
    assert store.events(job.id)[-1].detail == {"code": "engine_error", "message": "out of memory"}


def test_fail_finishes_a_queued_job(store: JobStore) -> None:
    job = _new(store)

    assert store.fail(job.id, "invalid_request", "num_frames: must be 4k+1").status == JobStatus.FAILED


def test_cancel_of_a_queued_job_cancels_it_at_once(store: JobStore) -> None:
    job = _new(store)

    canceled = store.cancel(job.id)

    assert canceled.status == JobStatus.CANCELED and canceled.finished_at is not None
    assert _events(store, job) == ["job.queued", "job.canceled"]


def test_cancel_of_a_running_job_only_flags_it_and_the_worker_sees_the_flag(store: JobStore) -> None:
    job = _running(store)

    flagged = store.cancel(job.id)

    assert flagged.status == JobStatus.RUNNING and flagged.cancel_requested is True
    assert store.renew_lease(job.id, OWNER, 60) is True
    assert store.set_progress(job.id, OWNER, 0.5) is True
    assert _events(store, job) == ["job.queued", "job.running"]


def test_mark_canceled_finishes_a_running_job_for_its_owner(store: JobStore) -> None:
    job = _running(store)
    store.cancel(job.id)

    assert store.mark_canceled(job.id, "worker-b") is None
    canceled = store.mark_canceled(job.id, OWNER)

    assert canceled is not None and canceled.status == JobStatus.CANCELED
    assert _events(store, job) == ["job.queued", "job.running", "job.canceled"]


def test_release_gives_a_running_job_back_to_the_queue(store: JobStore) -> None:
    job = _running(store)
    store.mark_published(job.id)

    released = store.release(job.id, OWNER, "worker shutting down")

    assert released is not None and released.status == JobStatus.QUEUED
    assert released.lease_owner is None and released.published_at is None
    assert store.events(job.id)[-1].type == "job.requeued"
    assert store.claim(job.id, "worker-b", 60).attempts == 2


def test_a_released_worker_may_still_record_its_result_until_another_worker_claims_the_job(store: JobStore) -> None:
    # The sweeper took the lease back while the worker's final write could not reach the database.
    first = _running(store)
    store.release(first.id, OWNER, "lease expired")
    done = store.succeed(first.id, OWNER, {"key": "videos/a.mp4", "bytes": 10}, None)
    assert done is not None and done.status == JobStatus.SUCCEEDED and done.attempts == 1
    assert _events(store, first) == ["job.queued", "job.running", "job.requeued", "job.succeeded"]
    assert store.claim(first.id, "worker-b", 60) is None  # the re-published message finds nothing to do

    # Once another worker holds it, the old result is refused: the new attempt owns the outcome.
    second = _running(store)
    store.release(second.id, OWNER, "lease expired")
    store.claim(second.id, "worker-b", 60)
    assert store.succeed(second.id, OWNER, {"key": "videos/b.mp4", "bytes": 10}, None) is None
    assert store.get(second.id).status == JobStatus.RUNNING
    # A worker that released the job cannot fail it either.
    third = _running(store)
    store.release(third.id, OWNER, "worker shutting down")
    assert store.fail(third.id, "engine_error", "boom", owner=OWNER) is None
    assert store.get(third.id).status == JobStatus.QUEUED


def test_sweep_requeues_a_job_whose_lease_expired(store: JobStore) -> None:
    job = _new(store)
    store.claim(job.id, OWNER, -1)

    store.sweep(max_attempts=3)

    assert store.get(job.id).status == JobStatus.QUEUED
    assert store.events(job.id)[-1].detail == {"reason": "lease expired"}


def test_sweep_fails_a_job_whose_lease_expired_after_its_last_attempt(store: JobStore) -> None:
    job = _new(store)
    store.claim(job.id, OWNER, -1)

    store.sweep(max_attempts=1)

    assert store.get(job.id).status == JobStatus.FAILED
    assert store.get(job.id).error_code == "worker_lost"


# ---- refused changes ---------------------------------------------------------------------------------------


def test_succeed_of_a_queued_job_is_refused(store: JobStore) -> None:
    job = _new(store)

    assert store.succeed(job.id, OWNER, {"key": "k"}, None) is None
    assert store.get(job.id).status == JobStatus.QUEUED


def test_succeed_by_a_worker_that_lost_the_lease_is_refused(store: JobStore) -> None:
    job = _running(store)

    assert store.succeed(job.id, "worker-b", {"key": "k"}, None) is None
    assert store.fail(job.id, "x", "y", owner="worker-b") is None
    assert store.release(job.id, "worker-b", "r") is None
    assert store.get(job.id).status == JobStatus.RUNNING


def test_cancel_of_an_unknown_or_malformed_id_raises_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.cancel(uuid.uuid4())
    with pytest.raises(JobNotFound):
        store.cancel("not-a-uuid")
    with pytest.raises(JobNotFound):
        store.get("not-a-uuid")


def _succeeded(store: JobStore) -> Job:
    job = _running(store)
    store.succeed(job.id, OWNER, {"key": "k"}, None)
    return job


def _failed(store: JobStore) -> Job:
    job = _running(store)
    store.fail(job.id, "engine_error", "boom", owner=OWNER)
    return job


def _canceled(store: JobStore) -> Job:
    job = _new(store)
    store.cancel(job.id)
    return job


TERMINAL_MAKERS: dict[str, Callable[[JobStore], Job]] = {
    "succeeded": _succeeded,
    "failed": _failed,
    "canceled": _canceled,
}
CHANGES: dict[str, Callable[[JobStore, uuid.UUID], Any]] = {
    "claim": lambda s, i: s.claim(i, OWNER, 60),
    "renew_lease": lambda s, i: s.renew_lease(i, OWNER, 60),
    "set_progress": lambda s, i: s.set_progress(i, OWNER, 0.5),
    "succeed": lambda s, i: s.succeed(i, OWNER, {"key": "other"}, None),
    "fail": lambda s, i: s.fail(i, "late", "too late"),
    "fail_as_owner": lambda s, i: s.fail(i, "late", "too late", owner=OWNER),
    "mark_canceled": lambda s, i: s.mark_canceled(i, OWNER),
    "release": lambda s, i: s.release(i, OWNER, "late"),
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("terminal", list(TERMINAL_MAKERS))
def test_a_terminal_job_never_changes(store: JobStore, terminal: str, change: str) -> None:
    job = TERMINAL_MAKERS[terminal](store)
    before = store.get(job.id)
    events_before = _events(store, job)

    assert CHANGES[change](store, job.id) is None

    after = store.get(job.id)
    assert after.status == before.status == JobStatus(terminal)
    assert (after.output, after.error_code, after.finished_at, after.progress) == (
        before.output,
        before.error_code,
        before.finished_at,
        before.progress,
    )
    assert _events(store, job) == events_before


@pytest.mark.parametrize("terminal", list(TERMINAL_MAKERS))
def test_cancel_of_a_terminal_job_raises_job_conflict(store: JobStore, terminal: str) -> None:
    job = TERMINAL_MAKERS[terminal](store)

    with pytest.raises(JobConflict):
        store.cancel(job.id)
    assert store.get(job.id).status == JobStatus(terminal)


# ---- webhook deliveries ------------------------------------------------------------------------------------


def test_a_job_with_a_webhook_url_gets_a_delivery_per_webhook_event(
    store: JobStore, published: list[uuid.UUID], deliveries
) -> None:
    job = _running(store, webhook_url=HOOK)
    store.succeed(job.id, OWNER, {"key": "k"}, None)

    rows = deliveries(job)
    assert [d.event_type for d in rows] == ["job.running", "job.succeeded"]
    assert all(d.url == HOOK and d.status == DeliveryStatus.PENDING and d.attempts == 0 for d in rows)
    assert sorted(published) == sorted(d.id for d in rows)
    payload = rows[-1].payload
    assert payload["type"] == "job.succeeded" and payload["timestamp"]
    assert payload["data"]["id"] == str(job.id) and payload["data"]["status"] == "succeeded"


def test_queued_and_requeued_events_send_no_webhook(store: JobStore, published: list[uuid.UUID], deliveries) -> None:
    job = _running(store, webhook_url=HOOK)
    store.release(job.id, OWNER, "shutdown")

    assert [d.event_type for d in deliveries(job)] == ["job.running"]
    assert len(published) == 1


def test_canceling_a_queued_job_with_a_webhook_url_sends_job_canceled(
    store: JobStore, published: list[uuid.UUID], deliveries
) -> None:
    job = _new(store, webhook_url=HOOK)

    store.cancel(job.id)

    assert [d.event_type for d in deliveries(job)] == ["job.canceled"]
    assert len(published) == 1


def test_a_job_without_a_webhook_url_gets_no_delivery(store: JobStore, published: list[uuid.UUID], deliveries) -> None:
    job = _running(store)
    store.fail(job.id, "engine_error", "boom", owner=OWNER)

    assert deliveries(job) == []
    assert published == []


def test_a_refused_change_creates_no_delivery(store: JobStore, published: list[uuid.UUID], deliveries) -> None:
    job = _new(store, webhook_url=HOOK)
    store.cancel(job.id)
    published.clear()

    assert store.fail(job.id, "late", "too late") is None

    assert [d.event_type for d in deliveries(job)] == ["job.canceled"]
    assert published == []
