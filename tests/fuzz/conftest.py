"""Fixtures of the fuzz tests: the API app (authentication on) over a database and Redis prefix of their own.

The app serves the shipped model registry (engine/models.toml), so the fuzzer meets the limits production has.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest
import redis
from flask import Flask

from api.app import create_app
from vidserve import db
from vidserve.keys import SCOPES, KeyStore
from vidserve.settings import Settings
from vidserve.storage import VideoStore

# The API tests' Redis DB: no worker consumes it, so the fuzzer's jobs stay queued and nobody runs them.
FUZZ_REDIS_DB = int(os.environ.get("VIDSERVE_TEST_API_REDIS_DB", "14"))


@pytest.fixture(scope="session")
def fuzz_settings(settings: Settings) -> Iterator[Settings]:
    database_url = settings.database_url + "_fuzz"
    db.create_database(database_url)
    db.upgrade(database_url)
    redis_url = f"{settings.redis_url.rsplit('/', 1)[0]}/{FUZZ_REDIS_DB}"
    prefix = f"{settings.redis_prefix}fuzz:"
    VideoStore(settings).ensure_bucket()  # /readyz checks it
    yield dataclasses.replace(settings, database_url=database_url, redis_url=redis_url, redis_prefix=prefix, auth="on")
    db.drop_database(database_url)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


@pytest.fixture(scope="session")
def fuzz_app(fuzz_settings: Settings) -> Flask:
    return create_app(fuzz_settings)


@pytest.fixture(scope="session")
def fuzz_auth(fuzz_settings: Settings) -> dict[str, str]:
    """The header of a live API key with every scope: the fuzzer reaches every operation as a real client."""
    # No concurrent-job quota: no worker runs here, so every accepted job stays queued.
    _key, token = KeyStore(fuzz_settings.database_url).create("fuzzer", list(SCOPES), max_concurrent_jobs=0)
    return {"Authorization": f"Bearer {token}"}
