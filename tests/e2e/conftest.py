"""One real stack per test module: the API under gunicorn, a generation worker and a webhook sender.

They run as subprocesses against the suite's Postgres, Redis DB and S3 server, serving the tiny Wan model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import (
    SERVED_MODEL,
    Stack,
    WebhookReceiver,
    isolated,
    start_api,
    start_celery_service,
    write_test_registry,
)

from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from vidserve.tools.processes import ManagedProcess


@pytest.fixture(scope="module")
def e2e_settings(settings: Settings, model_dir: Path) -> Settings:
    return isolated(
        settings,
        model_dir=str(model_dir),
        models_file=write_test_registry(model_dir),
        worker_models=SERVED_MODEL,
        worker_slots=4,
    )


@pytest.fixture(scope="module")
def stack(e2e_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    videos = VideoStore(e2e_settings)
    videos.ensure_bucket()
    started: list[ManagedProcess] = []
    try:
        started.append(start_celery_service("webhooks", e2e_settings, logs))
        started.append(start_celery_service("worker", e2e_settings, logs))
        api, api_url = start_api(e2e_settings, logs)
        started.append(api)
        store = JobStore(e2e_settings.database_url, lambda job: job_to_dict(job, None))
        yield Stack(e2e_settings, api_url, api, started[1], started[0], store, videos)
    finally:
        for proc in started:
            proc.terminate()
        codes = {proc.name: proc.stop(timeout=60) for proc in started}
    # A clean stop is part of the contract: Ctrl-C / SIGTERM must not leave a crashed worker behind.
    assert all(code == 0 for name, code in codes.items() if name != "api"), codes


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()
