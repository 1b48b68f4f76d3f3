"""Fixtures of the API tests: an app over a database, a Redis DB index and a model registry of their own.

The Flask test client talks to `create_app(settings)`; Postgres, Redis and S3 are the suite's real services.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from service_harness import StubDNS
from sqlalchemy import text

from api.app import create_app
from vidserve import db
from vidserve.keys import KeyStore
from vidserve.settings import ENV_VARS, Settings
from vidserve.storage import VideoStore

REPO = Path(__file__).resolve().parents[2]
# No worker consumes this Redis DB: the API tests' messages stay where the tests can read them, and the
# workers of other suites (possibly running at the same time) never meet them.
API_REDIS_DB = int(os.environ.get("VIDSERVE_TEST_API_REDIS_DB", "14"))

# The API tests pin their own registry, so a change to engine/models.toml cannot move their limits.
REGISTRY = """
[models.tiny-wan]
family = "wan"
path = "tiny/wan"
defaults = { num_frames = 9, height = 32, width = 32, num_inference_steps = 4, guidance_scale = 5.0, fps = 8 }
# Long videos up to 161 frames (20 s at 8 fps) from its native window of 33.
[models.tiny-wan.limits]
max_frames = 33
max_long_frames = 161
max_height = 128
max_width = 128
max_steps = 50
max_prompt_chars = 200

[models.tiny-ltx]
family = "ltx"
path = "tiny/ltx"
defaults = { num_frames = 9, height = 32, width = 32, num_inference_steps = 4, guidance_scale = 3.0, fps = 8 }
limits = { max_frames = 33, max_height = 128, max_width = 128, max_steps = 50 }
"""


@pytest.fixture(scope="session")
def api_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The suite's services, with a database and Redis DB of the API tests' own: they see only their jobs."""
    registry = tmp_path_factory.mktemp("registry") / "models.toml"
    registry.write_text(REGISTRY)
    database_url = settings.database_url + "_api"
    db.create_database(database_url)
    db.upgrade(database_url)
    redis_url = f"{settings.redis_url.rsplit('/', 1)[0]}/{API_REDIS_DB}"
    VideoStore(settings).ensure_bucket()
    yield dataclasses.replace(settings, database_url=database_url, redis_url=redis_url, models_file=str(registry))
    db.drop_database(database_url)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{settings.redis_prefix}*"):
        client.delete(key)


@pytest.fixture(scope="session")
def api_env(api_settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess (gunicorn, a probe) use `api_settings`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var, attr, _default, _ in ENV_VARS:
        env[var] = str(getattr(api_settings, attr))
    return env


# Public addresses for the example host names the tests' webhook URLs use (no test needs DNS or a network).
EXAMPLE_HOSTS = {"example.com": ["93.184.215.14"], "hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07::1"]}


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> StubDNS:
    """The submit check resolves a webhook URL's host: the example names resolve to public addresses."""
    return StubDNS(monkeypatch, EXAMPLE_HOSTS)


@pytest.fixture(scope="session")
def app(api_settings: Settings) -> Flask:
    return create_app(api_settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def auth_settings(api_settings: Settings) -> Settings:
    """`api_settings` with authentication on (the suite's own default is off)."""
    return dataclasses.replace(api_settings, auth="on")


@pytest.fixture(scope="session")
def auth_app(auth_settings: Settings) -> Flask:
    return create_app(auth_settings)


@pytest.fixture
def auth_client(auth_app: Flask) -> FlaskClient:
    return auth_app.test_client()


@dataclasses.dataclass(frozen=True)
class Key:
    """An API key made for a test: its token, its row's id and the header that sends it."""

    token: str
    id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


MakeKey = Callable[..., Key]


@pytest.fixture
def make_key(api_settings: Settings) -> MakeKey:
    """Create an API key (`jobs:read` and `jobs:write` unless scopes are given) through the key store."""
    store = KeyStore(api_settings.database_url)

    def _make(*scopes: str, max_concurrent_jobs: int | None = None, rate_limit_per_minute: int | None = None) -> Key:
        key, token = store.create(
            f"test-{uuid.uuid4().hex[:6]}",
            list(scopes or ("jobs:read", "jobs:write")),
            max_concurrent_jobs=max_concurrent_jobs,
            rate_limit_per_minute=rate_limit_per_minute,
        )
        return Key(token, key.id)

    return _make


@pytest.fixture
def no_jobs(api_settings: Settings) -> None:
    """Start from an empty job table (for listing and paging)."""
    with db.get_engine(api_settings.database_url).begin() as conn:
        conn.execute(text("TRUNCATE jobs CASCADE"))


class Broker:
    """The Celery queues in the API tests' Redis DB, read the way a worker would find them."""

    def __init__(self, url: str, key_prefix: str = "") -> None:
        self.redis = redis.Redis.from_url(url)
        self.key_prefix = key_prefix  # kombu's global_keyprefix, when the settings name one

    def messages(self, queue: str) -> list[dict[str, Any]]:
        """The Celery messages waiting on `queue`, oldest first, each as {task, args}."""
        found = []
        for raw in reversed(self.redis.lrange(self.key_prefix + queue, 0, -1)):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append({"task": message["headers"]["task"], "args": args})
        return found

    def find(self, queue: str, first_arg: str) -> dict[str, Any] | None:
        """The message on `queue` whose first argument (a job or delivery id) is `first_arg`, if any."""
        return next((m for m in self.messages(queue) if m["args"][:1] == [first_arg]), None)


@pytest.fixture
def broker(api_settings: Settings) -> Broker:
    return Broker(api_settings.redis_url, getattr(api_settings, "redis_prefix", ""))


@pytest.fixture
def count_jobs(api_settings: Settings) -> Callable[[], int]:
    def count() -> int:
        with db.get_engine(api_settings.database_url).connect() as conn:
            return conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()

    return count


Submit = Callable[..., dict[str, Any]]


@pytest.fixture
def submit(client: FlaskClient) -> Submit:
    """POST a valid job (tiny-wan unless `model` says otherwise) and return its JSON."""

    def _submit(**fields: Any) -> dict[str, Any]:
        body = {"model": "tiny-wan", "prompt": "a red fox running through snow", **fields}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.get_json()
        return response.get_json()

    return _submit
