"""The generate task in the test process: claim, engine, encode, upload, outcome; duplicates do nothing.

It runs the real tiny Wan engine and writes to the suite's Postgres and S3 server; Celery only carries the
job id, so calling the task body directly is what a delivered message does.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from typing import Any

from service_harness import (
    GATE_STEP,
    GATED_JOB,
    GATED_MODEL,
    GATED_STEPS,
    SERVED_MODEL,
    UNSERVED_MODEL,
    held_at_gate,
    queued_messages,
    wait_until,
)

from vidserve.queue import GENERATE_TASK, queue_for
from vidserve.schema import JobStatus
from worker import tasks
from worker.context import WorkerContext
from worker.video import decode_mp4

PARAMS = {"prompt": "a cat on a beach", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4}


def create_job(ctx: WorkerContext, model: str = SERVED_MODEL, **params: Any) -> str:
    return str(ctx.store.create(model=model, params={**PARAMS, **params}).id)


def events(ctx: WorkerContext, job_id: str) -> list[str]:
    return [e.type for e in ctx.store.events(job_id)]


def test_a_job_runs_to_succeeded_with_its_video_in_the_bucket(ctx: WorkerContext) -> None:
    job_id = create_job(ctx, seed=3)
    assert tasks.generate(ctx, job_id) == "succeeded"

    job = ctx.store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and job.progress == 1.0
    assert job.lease_owner is None and job.finished_at is not None
    assert job.output["key"] == ctx.videos.key_for(job_id)
    data = ctx.videos.get(job.output["key"])
    assert len(data) == job.output["bytes"]
    assert decode_mp4(data).shape == (9, 32, 32, 3)
    assert job.stats["steps_computed"] == 4 and "seconds_encoding" in job.stats
    assert events(ctx, job_id) == ["job.queued", "job.running", "job.succeeded"]


def test_a_duplicate_delivery_while_the_job_runs_does_nothing(ctx: WorkerContext) -> None:
    job_id = create_job(ctx)
    assert ctx.store.claim(job_id, "another-worker/1", 60) is not None  # the first delivery holds it

    assert tasks.generate(ctx, job_id) == "skipped"
    job = ctx.store.get(job_id)
    assert job.status == JobStatus.RUNNING and job.lease_owner == "another-worker/1" and job.attempts == 1
    assert events(ctx, job_id) == ["job.queued", "job.running"]


def test_a_delivery_after_the_job_finished_does_nothing(ctx: WorkerContext) -> None:
    job_id = create_job(ctx)
    assert tasks.generate(ctx, job_id) == "succeeded"
    assert tasks.generate(ctx, job_id) == "skipped"
    assert ctx.store.get(job_id).attempts == 1
    assert events(ctx, job_id) == ["job.queued", "job.running", "job.succeeded"]


def test_a_worker_shutting_down_declines_a_new_job_and_leaves_it_queued(ctx: WorkerContext) -> None:
    job_id = create_job(ctx)
    leaving = dataclasses.replace(ctx, shutting_down=threading.Event())
    leaving.shutting_down.set()

    assert tasks.generate(leaving, job_id) == "declined"  # the Celery task puts the message back (Reject, requeue)
    job = ctx.store.get(job_id)
    assert job.status == JobStatus.QUEUED and job.attempts == 0 and job.lease_owner is None
    assert events(ctx, job_id) == ["job.queued"]
    ctx.store.cancel(job_id)  # the fair queue would hand it to the next test's wake-up


def test_a_wake_up_spent_on_a_fairer_job_is_passed_on_to_the_job_it_named(ctx: WorkerContext) -> None:
    # The older job is first in the fair order; its own message is gone (e.g. taken by a worker that stopped).
    older = create_job(ctx, prompt="a dog in the snow")
    named = create_job(ctx, prompt="a cat in the rain")
    queue = queue_for(SERVED_MODEL)
    before = Counter(map(repr, queued_messages(ctx.settings, queue)))
    assert tasks.generate(ctx, named) == "succeeded"
    assert ctx.store.get(older).status == JobStatus.SUCCEEDED
    assert ctx.store.get(named).status == JobStatus.QUEUED
    # New messages are pushed at the head of the list: compare what was added, not a slice.
    added = Counter(map(repr, queued_messages(ctx.settings, queue))) - before
    assert added == Counter([repr((GENERATE_TASK, [named, SERVED_MODEL]))])
    assert tasks.generate(ctx, named) == "succeeded"  # that wake-up runs it
    assert ctx.store.get(named).status == JobStatus.SUCCEEDED


def test_a_message_for_an_unknown_job_is_dropped(ctx: WorkerContext) -> None:
    assert tasks.generate(ctx, str(uuid.uuid4())) == "skipped"


def test_a_job_for_a_model_this_worker_does_not_serve_stays_queued(ctx: WorkerContext) -> None:
    job_id = create_job(ctx, model=UNSERVED_MODEL)
    assert tasks.generate(ctx, job_id) == "not_served"
    assert ctx.store.get(job_id).status == JobStatus.QUEUED


def test_parameters_the_model_cannot_serve_fail_the_job_with_invalid_request(ctx: WorkerContext) -> None:
    job_id = create_job(ctx, num_frames=10)  # Wan takes 4k+1 frames
    assert tasks.generate(ctx, job_id) == "failed"
    job = ctx.store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error_code == "invalid_request"
    assert "num_frames" in job.error_message


def test_cancel_while_running_stops_the_engine_and_marks_the_job_canceled(gated_ctx: WorkerContext) -> None:
    # The job waits at the gate's step (never released): it is running, mid-way, when the cancel comes.
    params = {k: v for k, v in GATED_JOB.items() if k != "model"}
    job_id = create_job(gated_ctx, model=GATED_MODEL, **params)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(tasks.generate(gated_ctx, job_id)))
    runner.start()
    wait_until(lambda: held_at_gate(gated_ctx.store, job_id, GATED_STEPS), 120, what="the job held at the gate")
    gated_ctx.store.cancel(job_id)
    runner.join(30)
    assert outcome == ["canceled"]
    job = gated_ctx.store.get(job_id)
    assert job.status == JobStatus.CANCELED and job.progress == GATE_STEP / GATED_STEPS and job.output is None
    assert job.lease_owner is None


def test_an_upload_that_keeps_failing_hands_the_job_back_then_fails_it(ctx: WorkerContext) -> None:
    # Credentials the real S3 server rejects (403): every put fails, as during a key rotation gone wrong.
    broken = dataclasses.replace(
        ctx.settings, s3_secret_key="not-the-secret", max_attempts=2, upload_tries=2, upload_retry_seconds=0.05
    )
    broken_ctx = WorkerContext.build(broken, ctx.celery)
    broken_ctx.engines = ctx.engines  # share the loaded engine
    job_id = create_job(ctx)

    assert tasks.generate(broken_ctx, job_id) == "released"
    job = ctx.store.get(job_id)
    assert job.status == JobStatus.QUEUED and job.attempts == 1 and job.published_at is None
    assert ctx.store.events(job_id)[-1].detail["reason"].startswith("storage_unavailable")

    assert tasks.generate(broken_ctx, job_id) == "failed"
    job = ctx.store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error_code == "storage_unavailable" and job.output is None
