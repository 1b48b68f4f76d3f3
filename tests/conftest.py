"""Real services for the suite: a private Postgres database, a Redis DB index and an S3 server of its own.

Each run gets a fresh database and bucket, so the suite can run twice in a row and beside `make run`.
"""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from vidserve import db
from vidserve.settings import Settings
from vidserve.tools.s3server import S3Server, start_s3_server

PG_HOST = os.environ.get("VIDSERVE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("VIDSERVE_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("VIDSERVE_TEST_REDIS_DB", "13"))
RUN_ID = uuid.uuid4().hex[:8]
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
