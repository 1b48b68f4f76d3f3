"""Worker pieces run in the test process against the suite's real Postgres, Redis and S3 server.

A worker claims the first waiting job of its model in the fair queue, so each module's worker gets a database of
its own: jobs that other tests leave queued in the shared one would otherwise be claimed in their place.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import (
    GATED_MODEL,
    SERVED_MODEL,
    WebhookReceiver,
    isolated,
    new_gate,
    write_gated_registry,
    write_test_registry,
)

from vidserve import db
from vidserve.settings import Settings
from worker.context import WorkerContext
from worker.step_gate import StepGate


@pytest.fixture(scope="module")
def worker_database(database_url: str) -> Iterator[str]:
    url = f"{database_url}_worker_{uuid.uuid4().hex[:6]}"
    db.create_database(url)
    db.upgrade(url)
    yield url
    db.drop_database(url)


@pytest.fixture(scope="module")
def worker_settings(settings: Settings, model_dir: Path, worker_database: str) -> Settings:
    return isolated(
        settings,
        database_url=worker_database,
        model_dir=str(model_dir),
        models_file=write_test_registry(model_dir),
        worker_models=SERVED_MODEL,
    )


@pytest.fixture(scope="module")
def ctx(worker_settings: Settings) -> Iterator[WorkerContext]:
    context = WorkerContext.build(worker_settings)
    context.videos.ensure_bucket()
    yield context
    context.close()
    context.celery.close()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> StepGate:
    return new_gate(tmp_path_factory.mktemp("step-gate"))


@pytest.fixture(scope="module")
def gated_ctx(worker_settings: Settings, model_dir: Path, gate: StepGate) -> Iterator[WorkerContext]:
    """A worker serving only GATED_MODEL, whose jobs wait at `gate`'s step until released: an engine of its own,
    so nothing else is ever batched with them."""
    models_file = write_gated_registry(model_dir, gate)
    context = WorkerContext.build(
        dataclasses.replace(worker_settings, models_file=models_file, worker_models=GATED_MODEL)
    )
    context.videos.ensure_bucket()
    yield context
    context.close()
    context.celery.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_job_left_waiting(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that ran a worker, cancel what it left queued in its module's database: the fair queue
    hands a wake-up to the fairest waiting job, not the one it names, so a job one test left behind (a failed
    assertion, an interrupted run) would be claimed by the next test's `tasks.generate` and fail that one too."""
    yield
    contexts = [request.getfixturevalue(name) for name in ("ctx", "gated_ctx") if name in request.fixturenames]
    for context in contexts[:1]:
        for job in context.store.list(status="queued", limit=500):
            context.store.cancel(job.id)
