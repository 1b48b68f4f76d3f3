"""Long videos and extensions in the generate task, on the real tiny Wan engine, Postgres and S3 server.

A finished job keeps its final latents beside its MP4; an extension job continues from them (its source's
latents handed to the engine as context) and makes the new frames, after the original's when asked.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import torch
from service_harness import GATED_MODEL, SERVED_MODEL, wait_until

from vidserve.schema import JobStatus
from worker import tasks
from worker.context import WorkerContext
from worker.latents import get_latents
from worker.video import decode_mp4

PARAMS = {"prompt": "a red square moving right", "height": 32, "width": 32, "num_inference_steps": 2}


def run_job(ctx: WorkerContext, **params: Any) -> Any:
    job_id = str(ctx.store.create(model=SERVED_MODEL, params={**PARAMS, **params}).id)
    assert tasks.generate(ctx, job_id) in ("succeeded", "failed")
    return ctx.store.get(job_id)


def frames_of(ctx: WorkerContext, job: Any) -> Any:
    return decode_mp4(ctx.videos.get(job.output["key"]))


def test_a_long_job_beyond_the_window_makes_every_frame(ctx: WorkerContext) -> None:
    job = run_job(ctx, num_frames=97, seed=1)  # three times the window of 33

    assert job.status == JobStatus.SUCCEEDED, (job.error_code, job.error_message)
    assert job.output["num_frames"] == 97
    assert frames_of(ctx, job).shape == (97, 32, 32, 3)


def test_a_finished_job_keeps_its_final_latents_beside_its_video(ctx: WorkerContext) -> None:
    job = run_job(ctx, num_frames=9, seed=2)

    assert job.status == JobStatus.SUCCEEDED
    assert job.output["latents_key"] == ctx.videos.latents_key_for(str(job.id))
    latents = get_latents(ctx.videos, job.output["latents_key"])
    assert isinstance(latents, torch.Tensor) and latents.dtype.is_floating_point
    assert torch.isfinite(latents).all()
    assert job.output["latents_bytes"] == len(ctx.videos.get(job.output["latents_key"]))


def test_an_extension_continues_its_source_with_the_new_frames_only(ctx: WorkerContext) -> None:
    source = run_job(ctx, num_frames=17, seed=3)
    extends = {"job_id": str(source.id), "include_original": False}

    job = run_job(ctx, num_frames=33, seed=4, prompt="it keeps moving right", extends=extends)

    assert job.status == JobStatus.SUCCEEDED, (job.error_code, job.error_message)
    assert frames_of(ctx, job).shape == (33, 32, 32, 3)
    assert job.output["latents_key"]  # an extension can be extended again


def test_an_extension_that_includes_its_original_starts_with_the_originals_frames(ctx: WorkerContext) -> None:
    source = run_job(ctx, num_frames=17, seed=5)
    original = frames_of(ctx, source)

    job = run_job(ctx, num_frames=33, seed=6, extends={"job_id": str(source.id), "include_original": True})

    assert job.status == JobStatus.SUCCEEDED, (job.error_code, job.error_message)
    frames = frames_of(ctx, job)
    assert frames.shape == (17 + 33, 32, 32, 3) and job.output["num_frames"] == 50
    # The original's frames went through a second H.264 pass: close to the stored original, not bit-equal.
    assert abs(frames[:17].astype(int) - original.astype(int)).mean() < 4


def test_an_extension_whose_source_is_gone_fails_with_source_unavailable(ctx: WorkerContext) -> None:
    source = run_job(ctx, num_frames=9, seed=7)
    ctx.videos.delete(source.output["latents_key"])
    deleted = {"job_id": str(uuid.uuid4()), "include_original": False}

    for extends in ({"job_id": str(source.id), "include_original": False}, deleted):
        job = run_job(ctx, num_frames=9, extends=extends)
        assert job.status == JobStatus.FAILED and job.error_code == "source_unavailable", job.error_message


def test_cancel_of_a_long_job_mid_way_stores_no_video(gated_ctx: WorkerContext) -> None:
    # Its pieces wait at the gate's step (never released): the job is mid-way, running, when the cancel comes.
    ctx = gated_ctx
    params = {**PARAMS, "num_frames": 97, "num_inference_steps": 8}
    job_id = str(ctx.store.create(model=GATED_MODEL, params=params).id)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(tasks.generate(ctx, job_id)))
    runner.start()
    wait_until(lambda: ctx.store.get(job_id).progress > 0, 120, what="progress")

    ctx.store.cancel(job_id)
    runner.join(60)

    assert outcome == ["canceled"]
    job = ctx.store.get(job_id)
    assert job.status == JobStatus.CANCELED and job.output is None and job.progress < 0.5
    assert ctx.videos.get_if_exists(ctx.videos.key_for(job_id)) is None
    assert ctx.videos.get_if_exists(ctx.videos.latents_key_for(job_id)) is None
