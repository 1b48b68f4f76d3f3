"""Worker pieces run in the test process against the suite's real Postgres, Redis and S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import SERVED_MODEL, WebhookReceiver, isolated, write_test_registry

from vidserve.settings import Settings
from worker.context import WorkerContext


@pytest.fixture(scope="module")
def worker_settings(settings: Settings, model_dir: Path) -> Settings:
    return isolated(
        settings, model_dir=str(model_dir), models_file=write_test_registry(model_dir), worker_models=SERVED_MODEL
    )


@pytest.fixture(scope="module")
def ctx(worker_settings: Settings) -> Iterator[WorkerContext]:
    context = WorkerContext.build(worker_settings)
    context.videos.ensure_bucket()
    yield context
    context.close()
    context.celery.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()
