"""A job stopped mid-way resumes from its checkpoint in the bucket on its next attempt, with the frames of an
uninterrupted run; its checkpoint is gone once it ends. Real tiny Wan engine, Postgres and S3 server."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
from service_harness import SERVED_MODEL, wait_until

from engine.checkpoint import Checkpoint
from vidserve.schema import JobStatus
from vidserve.storage import VideoStore
from worker import tasks
from worker.checkpoints import JobCheckpoints
from worker.context import WorkerContext
from worker.video import decode_mp4

# Long enough that a stop (seen at the slot's next half-second tick) lands mid-run on a quiet machine, where a
# tiny step takes about 2 ms.
STEPS = 1000
PARAMS = {"prompt": "a slow river", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": STEPS, "seed": 4}


def own_context(ctx: WorkerContext, every: int) -> WorkerContext:
    """The module's worker with its own shutdown flag and checkpoint interval (engines and stores shared)."""
    settings = dataclasses.replace(ctx.settings, checkpoint_every_steps=every)
    return dataclasses.replace(ctx, settings=settings, shutting_down=threading.Event())


def create_job(ctx: WorkerContext, **params: Any) -> str:
    return str(ctx.store.create(model=SERVED_MODEL, params={**PARAMS, **params}).id)


def frames_of(ctx: WorkerContext, job_id: str) -> np.ndarray:
    return decode_mp4(ctx.videos.get(ctx.store.get(job_id).output["key"]))


def test_a_job_handed_back_mid_way_resumes_from_its_checkpoint_with_the_same_video(ctx: WorkerContext) -> None:
    first = own_context(ctx, every=5)
    job_id = create_job(ctx)
    key = VideoStore.checkpoint_key(job_id)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(tasks.generate(first, job_id)))
    runner.start()
    wait_until(lambda: ctx.videos.get_if_exists(key) is not None, 120, interval=0.02, what="a checkpoint")
    first.shutting_down.set()  # a warm shutdown: the job goes back to the queue mid-way
    runner.join(60)
    assert outcome == ["released"]
    saved = Checkpoint.from_bytes(ctx.videos.get(key))  # kept for the next attempt
    assert 0 < saved.step < STEPS and saved.step % 5 == 0

    assert tasks.generate(own_context(ctx, every=5), job_id) == "succeeded"
    job = ctx.store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2 and job.progress == 1.0
    assert job.stats["resumed_from_step"] == saved.step
    assert job.stats["steps_computed"] == STEPS and job.stats["checkpoints_written"] > 0
    assert ctx.videos.get_if_exists(key) is None  # deleted once the job ended

    uninterrupted = create_job(ctx)
    assert tasks.generate(own_context(ctx, every=0), uninterrupted) == "succeeded"
    assert ctx.store.get(uninterrupted).stats["resumed_from_step"] == 0
    assert np.array_equal(frames_of(ctx, job_id), frames_of(ctx, uninterrupted))
    # Same frames, same encoder settings: the MP4 files are the same bytes.
    assert ctx.videos.get(job.output["key"]) == ctx.videos.get(ctx.store.get(uninterrupted).output["key"])


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


def test_a_canceled_job_leaves_no_checkpoint(ctx: WorkerContext) -> None:
    job_id = create_job(ctx)
    key = VideoStore.checkpoint_key(job_id)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(tasks.generate(own_context(ctx, every=5), job_id)))
    runner.start()
    wait_until(lambda: ctx.videos.get_if_exists(key) is not None, 120, interval=0.02, what="a checkpoint")
    ctx.store.cancel(job_id)
    runner.join(60)
    assert outcome == ["canceled"]
    assert ctx.videos.get_if_exists(key) is None


def test_a_failed_checkpoint_upload_only_counts_and_logs(ctx: WorkerContext) -> None:
    # Credentials the real S3 server rejects (403): every checkpoint upload fails.
    rejected = VideoStore(dataclasses.replace(ctx.settings, s3_secret_key="not-the-secret"))
    checkpoints = JobCheckpoints(rejected, "job")
    request = ctx.registry.get(SERVED_MODEL).resolve("job", {**PARAMS, "num_inference_steps": 6})
    result = ctx.engines.get(SERVED_MODEL).submit(request, checkpoint_every=2, on_checkpoint=checkpoints.offer)
    assert result.result(60).stats.steps_computed == 6  # the request went on
    checkpoints.close()
    assert checkpoints.written == 0 and checkpoints.failed >= 1
