"""Real services for the suite: a private Postgres database, a Redis DB index and an S3 server of its own, and
one real stack (API under gunicorn, worker, webhook sender) that every module driving it shares.

Each run gets a fresh database and bucket, so the suite can run twice in a row and beside `make run`.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from service_harness import (
    GATED_MODEL,
    SERVED_MODEL,
    Stack,
    isolated,
    new_gate,
    start_api,
    start_celery_service,
    wait_until,
    write_gated_registry,
)

from vidserve import db
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobConflict, JobStore
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from vidserve.tools.processes import ManagedProcess
from vidserve.tools.s3server import S3Server, start_s3_server
from worker.step_gate import StepGate

PG_HOST = os.environ.get("VIDSERVE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("VIDSERVE_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("VIDSERVE_TEST_REDIS_DB", "13"))
RUN_ID = uuid.uuid4().hex[:8]
# The shared stack's admin dashboard password (tests/admin signs in with it).
ADMIN_TOKEN = "admin-test-token"
REDIS_PREFIX = f"vidserve-test-{RUN_ID}:"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = f"{PG_HOST}/vidserve_test_{RUN_ID}"
    db.create_database(url)
    db.upgrade(url)
    yield url
    db.drop_database(url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = f"{REDIS_BASE}/{REDIS_DB}"
    yield url
    # Only this run's keys (every key carries the run's prefix): a suite running beside it keeps its own.
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{REDIS_PREFIX}*"):
        client.delete(key)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3"), "vidserve-test", "vidserve-test-secret")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight pipelines of every family, built once per run."""
    from engine.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("models")
    build_tiny_models(root / "tiny")
    return root


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, s3_server: S3Server, webhook_secret: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=REDIS_PREFIX,
        s3_endpoint=s3_server.endpoint,
        s3_access_key="vidserve-test",
        s3_secret_key="vidserve-test-secret",
        s3_bucket=f"vidserve-test-{RUN_ID}",
        webhook_secret=webhook_secret,
        webhook_retry_scale=0.01,
        # The suite's webhook receivers listen on loopback, which production settings refuse.
        webhook_allowed_networks="127.0.0.0/8,::1/128",
        # The suite's API calls carry no key; tests of authentication turn it on.
        auth="off",
        lease_seconds=10,
        sweep_seconds=1,
    )


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a subprocess (API, worker) use `settings`."""
    from vidserve.settings import ENV_VARS

    env = dict(os.environ)
    for var, attr, _default, _ in ENV_VARS:
        value = getattr(settings, attr)
        env[var] = str(value)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def stack_gate(tmp_path_factory: pytest.TempPathFactory) -> StepGate:
    """The step gate of the shared stack's GATED_MODEL: its jobs wait at GATE_STEP until a test releases them."""
    return new_gate(tmp_path_factory.mktemp("stack-gate"))


@pytest.fixture(scope="session")
def stack_settings(settings: Settings, model_dir: Path, stack_gate: StepGate) -> Iterator[Settings]:
    """The shared stack's settings: a database and a bucket of its own (its sweeper deletes the checkpoints of jobs
    its database does not know, and must never touch another test's jobs or checkpoints) and Redis keys prefixed
    by that database's name."""
    database_url = f"{settings.database_url}_stack"
    db.create_database(database_url)
    db.upgrade(database_url)
    stack_settings = isolated(
        dataclasses.replace(settings, database_url=database_url, s3_bucket=f"{settings.s3_bucket}-stack"),
        model_dir=str(model_dir),
        models_file=write_gated_registry(model_dir, stack_gate, "stack-models.toml"),
        worker_models=f"{SERVED_MODEL},{GATED_MODEL}",
        worker_slots=4,
        admin_token=ADMIN_TOKEN,
        heartbeat_seconds=1.0,  # the admin workers page shows the worker within a second
    )
    yield stack_settings
    db.drop_database(database_url)
    client = redis.Redis.from_url(stack_settings.redis_url)
    for key in client.scan_iter(match=f"{stack_settings.redis_prefix}*"):
        client.delete(key)


@pytest.fixture(scope="session")
def stack(stack_settings: Settings, stack_gate: StepGate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real stack for the whole run (starting one costs about 10 s): tests/admin, tests/api (OpenAI SDK),
    tests/cli and tests/e2e drive it. A test that holds GATED_MODEL jobs ends them (`gated_jobs` cancels what
    is left), so the worker's slots are free for the next."""
    logs = tmp_path_factory.mktemp("stack-logs")
    videos = VideoStore(stack_settings)
    videos.ensure_bucket()
    started: list[ManagedProcess] = []
    try:
        started.append(start_celery_service("webhooks", stack_settings, logs))
        started.append(start_celery_service("worker", stack_settings, logs))
        api, api_url = start_api(stack_settings, logs)
        started.append(api)
        store = JobStore(stack_settings.database_url, lambda job: job_to_dict(job, None))
        yield Stack(stack_settings, api_url, api, started[1], started[0], store, videos, stack_gate)
    finally:
        for proc in started:
            proc.terminate()
        codes = {proc.name: proc.stop(timeout=60) for proc in started}
    # A clean stop is part of the contract: Ctrl-C / SIGTERM must not leave a crashed worker behind.
    assert all(code == 0 for name, code in codes.items() if name != "api"), codes


@pytest.fixture
def gated_jobs(stack: Stack) -> Iterator[StepGate]:
    """The shared stack's gate, for a test that submits GATED_MODEL jobs; whatever of them is left unfinished at
    the end is canceled, so no held job keeps a worker slot from the next test."""
    yield stack.gate
    left = [
        row.id
        for status in ("queued", "running")
        for row in stack.store.list(status=status, model=GATED_MODEL, limit=500)
    ]
    for job_id in left:
        try:
            stack.store.cancel(job_id)
        except JobConflict:  # it ended meanwhile
            pass
    wait_until(lambda: all(stack.store.get(j).status.terminal for j in left), 60, what="the held jobs to stop")
