"""The worker serves every registered model of the shipped registry: the five families' tiny models and the
project's own trained model, each job from claim to a decodable MP4 in the bucket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import isolated

from engine.registry import ModelRegistry
from vidserve.schema import JobStatus
from vidserve.settings import Settings
from worker import tasks
from worker.context import WorkerContext
from worker.video import decode_mp4

SHIPPED = ModelRegistry.from_file(model_dir="unused")


@pytest.fixture(scope="module")
def every_model(settings: Settings, model_dir: Path, worker_database: str) -> Iterator[WorkerContext]:
    # The shipped engine/models.toml, with the tiny models built for this run.
    context = WorkerContext.build(
        isolated(settings, database_url=worker_database, model_dir=str(model_dir), models_file="", worker_models="")
    )
    context.videos.ensure_bucket()
    yield context
    context.close()
    context.celery.close()


@pytest.mark.parametrize("model", SHIPPED.names())
def test_a_job_of_every_shipped_model_succeeds_with_its_video(every_model: WorkerContext, model: str) -> None:
    defaults = SHIPPED.get(model).defaults
    job_id = str(every_model.store.create(model=model, params={"prompt": "a blue circle moving up", "seed": 1}).id)

    assert tasks.generate(every_model, job_id) == "succeeded", every_model.store.get(job_id).error_message
    job = every_model.store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED
    video = decode_mp4(every_model.videos.get(job.output["key"]))
    assert video.shape == (defaults.num_frames, defaults.height, defaults.width, 3)
