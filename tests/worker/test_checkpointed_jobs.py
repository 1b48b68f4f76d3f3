"""A job stopped mid-way resumes from its checkpoint in the bucket on its next attempt, with the frames of an
uninterrupted run; its checkpoint is gone once it ends. Real tiny Wan engine, Postgres and S3 server.

Jobs to be stopped mid-way run on the gated model (worker.step_gate): they wait at GATE_STEP, with that step's
checkpoint in the bucket, until the test has stopped or canceled them, whatever the machine's speed. That model's
engine serves nothing else, so the interrupted and the uninterrupted runs have the same batch mates (none) and
the README's byte-for-byte promise applies; across different batch mates the engine promises a float tolerance
instead (tests/engine/test_resume.py)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
from service_harness import GATE_STEP, GATED_MODEL, SERVED_MODEL, wait_until

from engine.checkpoint import Checkpoint
from vidserve.schema import JobStatus
from vidserve.storage import VideoStore
from worker import tasks
from worker.checkpoints import JobCheckpoints
from worker.context import WorkerContext
from worker.step_gate import StepGate
from worker.video import decode_mp4

STEPS = 8
# Checkpoints every EVERY steps: one of them is the gate's step, where the gated job waits.
EVERY = 2
PARAMS = {"prompt": "a slow river", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": STEPS, "seed": 4}


def own_context(ctx: WorkerContext, every: int) -> WorkerContext:
    """The module's worker with its own shutdown flag and checkpoint interval (engines and stores shared)."""
    settings = dataclasses.replace(ctx.settings, checkpoint_every_steps=every)
    return dataclasses.replace(ctx, settings=settings, shutting_down=threading.Event())


def create_job(ctx: WorkerContext, model: str = SERVED_MODEL, **params: Any) -> str:
    return str(ctx.store.create(model=model, params={**PARAMS, **params}).id)


def checkpoint_step(ctx: WorkerContext, key: str) -> int | None:
    data = ctx.videos.get_if_exists(key)
    return None if data is None else Checkpoint.from_bytes(data).step


def start_held(ctx: WorkerContext, job_id: str) -> tuple[threading.Thread, list[str]]:
    """Run the gated job on a slot thread until it waits at the gate with that step's checkpoint in the bucket."""
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(tasks.generate(ctx, job_id)))
    runner.start()
    key = VideoStore.checkpoint_key(job_id)
    wait_until(lambda: checkpoint_step(ctx, key) == GATE_STEP, 120, interval=0.02, what="the gate's checkpoint")
    return runner, outcome


def frames_of(ctx: WorkerContext, job_id: str) -> np.ndarray:
    return decode_mp4(ctx.videos.get(ctx.store.get(job_id).output["key"]))


def test_a_job_handed_back_mid_way_resumes_from_its_checkpoint_with_the_same_video(
    gated_ctx: WorkerContext, gate: StepGate
) -> None:
    first = own_context(gated_ctx, every=EVERY)
    job_id = create_job(gated_ctx, GATED_MODEL)
    key = VideoStore.checkpoint_key(job_id)
    runner, outcome = start_held(first, job_id)
    first.shutting_down.set()  # a warm shutdown: the job goes back to the queue mid-way
    runner.join(60)
    assert outcome == ["released"]
    saved = Checkpoint.from_bytes(gated_ctx.videos.get(key))  # kept for the next attempt
    assert saved.step == GATE_STEP

    gate.release(job_id)
    assert tasks.generate(own_context(gated_ctx, every=EVERY), job_id) == "succeeded"
    job = gated_ctx.store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2 and job.progress == 1.0
    assert job.stats["resumed_from_step"] == GATE_STEP
    assert job.stats["steps_computed"] == STEPS and job.stats["checkpoints_written"] > 0
    assert gated_ctx.videos.get_if_exists(key) is None  # deleted once the job ended

    uninterrupted = create_job(gated_ctx, GATED_MODEL)
    gate.release(uninterrupted)
    assert tasks.generate(own_context(gated_ctx, every=0), uninterrupted) == "succeeded"
    assert gated_ctx.store.get(uninterrupted).stats["resumed_from_step"] == 0
    # Both ran alone in their engine (the same batch mates: none), so the frames are equal bit for bit.
    assert np.array_equal(frames_of(gated_ctx, job_id), frames_of(gated_ctx, uninterrupted))
    # Same frames, same encoder settings: the MP4 files are the same bytes.
    resumed_mp4 = gated_ctx.videos.get(job.output["key"])
    assert resumed_mp4 == gated_ctx.videos.get(gated_ctx.store.get(uninterrupted).output["key"])


def test_a_checkpoint_of_other_parameters_is_ignored_and_the_job_starts_over(ctx: WorkerContext) -> None:
    job_id = create_job(ctx, num_inference_steps=8)
    other = ctx.registry.get(SERVED_MODEL).resolve(job_id, {**PARAMS, "num_inference_steps": 8})
    taken: list[Checkpoint] = []
    engine = ctx.engines.get(SERVED_MODEL)
    engine.submit(dataclasses.replace(other, seed=99), checkpoint_every=4, on_checkpoint=taken.append).result(60)
    ctx.videos.put(VideoStore.checkpoint_key(job_id), taken[0].to_bytes())
    # Its first attempt died after the claim: the next one looks for a checkpoint.
    assert ctx.store.claim(job_id, "dead-worker/1", 60) is not None
    assert ctx.store.release(job_id, "dead-worker/1", "worker died") is not None

    assert tasks.generate(ctx, job_id) == "succeeded"
    job = ctx.store.get(job_id)
    assert job.attempts == 2 and job.stats["resumed_from_step"] == 0 and job.stats["steps_computed"] == 8
    assert ctx.videos.get_if_exists(VideoStore.checkpoint_key(job_id)) is None


def test_unreadable_checkpoint_bytes_start_the_job_over(ctx: WorkerContext) -> None:
    job_id = create_job(ctx, num_inference_steps=8)
    ctx.videos.put(VideoStore.checkpoint_key(job_id), b"half a checkpoint")
    assert ctx.store.claim(job_id, "dead-worker/2", 60) is not None
    assert ctx.store.release(job_id, "dead-worker/2", "worker died") is not None
    assert tasks.generate(ctx, job_id) == "succeeded"
    assert ctx.store.get(job_id).stats["resumed_from_step"] == 0


def test_a_canceled_job_leaves_no_checkpoint(gated_ctx: WorkerContext) -> None:
    job_id = create_job(gated_ctx, GATED_MODEL)
    runner, outcome = start_held(own_context(gated_ctx, every=EVERY), job_id)
    gated_ctx.store.cancel(job_id)
    runner.join(60)
    assert outcome == ["canceled"]
    assert gated_ctx.videos.get_if_exists(VideoStore.checkpoint_key(job_id)) is None


def test_a_failed_checkpoint_upload_only_counts_and_logs(ctx: WorkerContext) -> None:
    # Credentials the real S3 server rejects (403): every checkpoint upload fails.
    rejected = VideoStore(dataclasses.replace(ctx.settings, s3_secret_key="not-the-secret"))
    checkpoints = JobCheckpoints(rejected, "job")
    request = ctx.registry.get(SERVED_MODEL).resolve("job", {**PARAMS, "num_inference_steps": 6})
    result = ctx.engines.get(SERVED_MODEL).submit(request, checkpoint_every=2, on_checkpoint=checkpoints.offer)
    assert result.result(60).stats.steps_computed == 6  # the request went on
    checkpoints.close()
    assert checkpoints.written == 0 and checkpoints.failed >= 1
