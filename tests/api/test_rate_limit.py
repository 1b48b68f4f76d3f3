"""Per-client submission rate limits, over real HTTP against Redis: 429 with Retry-After past the budget.

Each test serves its own app (its own Redis key prefix, so budgets start full) on a real port; a client's
address is chosen by binding the client socket to another loopback address (127.0.0.2, ...).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import limits.storage.redis
import pytest
from service_harness import ManualClock
from werkzeug.serving import BaseWSGIServer, make_server

from api import rate_limit
from api.app import create_app
from api.errors import TooManyJobs
from vidserve.keys import KeyStore
from vidserve.settings import Settings

JOB = {"model": "tiny-wan", "prompt": "a red fox running through snow"}
Serve = Callable[..., tuple[str, int]]


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection(*address, timeout=10, source_address=(source, 0))
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read()))
    finally:
        conn.close()


def submit(address: tuple[str, int], source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> Answer:
    return request(address, "POST", "/v1/jobs", JOB, source, headers)


@pytest.fixture
def serve(api_settings: Settings) -> Iterator[Serve]:
    """Start an app with `overrides` on a free port; apps started in one test share their Redis key prefix."""
    prefix = f"{api_settings.redis_prefix}rate-{uuid.uuid4().hex[:8]}:"
    servers: list[BaseWSGIServer] = []

    def _serve(**overrides: Any) -> tuple[str, int]:
        settings = dataclasses.replace(api_settings, redis_prefix=prefix, **overrides)
        app = create_app(settings)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return ("127.0.0.1", server.server_port)

    yield _serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_submissions_past_the_limit_are_refused_with_429_and_retry_after(serve: Serve, count_jobs) -> None:
    address = serve(rate_limit_per_minute=3)

    accepted = [submit(address) for _ in range(3)]
    jobs_before = count_jobs()
    refused = submit(address)

    assert [a.status for a in accepted] == [202, 202, 202]
    assert [a.headers["ratelimit-limit"] for a in accepted] == ["3", "3", "3"]
    assert [a.headers["ratelimit-remaining"] for a in accepted] == ["2", "1", "0"]
    assert refused.status == 429
    assert refused.body["error"]["code"] == "rate_limited"
    assert "3 job submissions" in refused.body["error"]["message"]
    # The window is a minute and the first submission was just now: the budget comes back within it.
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0"
    assert count_jobs() == jobs_before


def test_the_budget_comes_back_after_retry_after(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    # The limiter's clock (the `limits` package reads time.time() and hands it to Redis' scripts) stands still
    # until the test moves it: the minute passes without waiting for it.
    # A whole second: Redis' scripts hand timestamps back as strings of 14 digits, which would round a fraction.
    clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    now = SimpleNamespace(time=lambda: clock.now.timestamp())
    monkeypatch.setattr(limits.storage.redis, "time", now)
    monkeypatch.setattr(rate_limit, "time", now)
    address = serve(rate_limit_per_minute=2)
    assert [submit(address).status for _ in range(2)] == [202, 202]

    refused = submit(address)
    retry_after = int(refused.headers["retry-after"])

    assert refused.status == 429
    assert retry_after == 60  # both submissions were at this very instant
    clock.advance(retry_after - 0.5)
    assert submit(address).status == 429
    clock.advance(1)
    back = submit(address)
    assert back.status == 202 and back.headers["ratelimit-remaining"] == "1"


def test_each_client_address_has_its_own_budget(serve: Serve) -> None:
    address = serve(rate_limit_per_minute=2)
    assert [submit(address).status for _ in range(3)] == [202, 202, 429]

    other = submit(address, source="127.0.0.2")

    assert other.status == 202
    assert other.headers["ratelimit-remaining"] == "1"


def test_the_openai_create_shares_the_budget_and_answers_in_openai_shape(serve: Serve) -> None:
    address = serve(rate_limit_per_minute=2)
    assert submit(address).status == 202
    video = {"model": "tiny-wan", "prompt": "a red fox"}
    assert request(address, "POST", "/v1/videos", video).status == 200

    refused = request(address, "POST", "/v1/videos", video)

    assert refused.status == 429
    assert refused.body["error"]["code"] == "rate_limited"
    assert set(refused.body["error"]) == {"message", "type", "param", "code"}
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_reads_are_not_limited(serve: Serve) -> None:
    address = serve(rate_limit_per_minute=1)
    job = submit(address).body
    assert submit(address).status == 429

    reads = [request(address, "GET", f"/v1/jobs/{job['id']}") for _ in range(3)]
    reads.append(request(address, "GET", "/v1/jobs?limit=1"))

    assert [r.status for r in reads] == [200, 200, 200, 200]
    assert all("ratelimit-limit" not in r.headers for r in reads)


def test_two_api_processes_share_one_budget_in_redis(serve: Serve) -> None:
    first, second = serve(rate_limit_per_minute=2), serve(rate_limit_per_minute=2)

    statuses = [submit(first).status, submit(second).status, submit(first).status, submit(second).status]

    assert statuses == [202, 202, 429, 429]


def test_zero_means_unlimited_and_sends_no_headers(serve: Serve) -> None:
    address = serve(rate_limit_per_minute=0)

    answers = [submit(address) for _ in range(5)]

    assert [a.status for a in answers] == [202] * 5
    assert all("ratelimit-limit" not in a.headers for a in answers)


def test_with_redis_away_submissions_go_through_unlimited(serve: Serve) -> None:
    # Fail open: the limit protects capacity, not correctness, and a stored job is published by the sweeper later.
    address = serve(rate_limit_per_minute=1, redis_url="redis://127.0.0.1:1/0")

    answers = [submit(address) for _ in range(3)]

    assert [a.status for a in answers] == [202, 202, 202]
    assert all("ratelimit-limit" not in a.headers for a in answers)


def _key(api_settings: Settings, rate_limit_per_minute: int | None = None) -> dict[str, str]:
    _key_row, token = KeyStore(api_settings.database_url).create(
        "rate-test", ["jobs:read", "jobs:write"], rate_limit_per_minute=rate_limit_per_minute
    )
    return {"Authorization": f"Bearer {token}"}


def test_each_api_key_has_its_own_budget_whatever_its_address(serve: Serve, api_settings: Settings) -> None:
    address = serve(auth="on", rate_limit_per_minute=2)
    first, second = _key(api_settings), _key(api_settings)

    # One key from two addresses draws on one budget; another key from the same address has its own.
    statuses = [
        submit(address, "127.0.0.1", first).status,
        submit(address, "127.0.0.2", first).status,
        submit(address, "127.0.0.3", first).status,
        submit(address, "127.0.0.1", second).status,
    ]

    assert statuses == [202, 202, 429, 202]


def test_a_keys_own_limit_overrides_the_default(serve: Serve, api_settings: Settings) -> None:
    address = serve(auth="on", rate_limit_per_minute=1)
    generous, unlimited = _key(api_settings, rate_limit_per_minute=3), _key(api_settings, rate_limit_per_minute=0)

    generous_answers = [submit(address, headers=generous) for _ in range(4)]
    unlimited_statuses = [submit(address, headers=unlimited).status for _ in range(3)]

    assert [a.status for a in generous_answers] == [202, 202, 202, 429]
    assert generous_answers[0].headers["ratelimit-limit"] == "3"
    assert unlimited_statuses == [202, 202, 202]


def test_a_request_without_a_valid_key_is_refused_before_it_counts(serve: Serve, api_settings: Settings) -> None:
    address = serve(auth="on", rate_limit_per_minute=1)

    unauthenticated = [submit(address, headers={"Authorization": "Bearer nope"}).status for _ in range(2)]

    assert unauthenticated == [401, 401]
    assert submit(address, headers=_key(api_settings)).status == 202


def test_the_job_quotas_429_keeps_its_own_retry_after(serve: Serve, api_settings: Settings) -> None:
    address = serve(auth="on", rate_limit_per_minute=5)
    _key_row, token = KeyStore(api_settings.database_url).create("quota-test", ["jobs:write"], max_concurrent_jobs=1)
    headers = {"Authorization": f"Bearer {token}"}
    assert submit(address, headers=headers).status == 202

    quota = submit(address, headers=headers)

    assert quota.status == 429
    assert quota.body["error"]["code"] == "too_many_concurrent_jobs"
    assert quota.headers["retry-after"] == str(TooManyJobs.RETRY_AFTER_SECONDS)
    assert quota.headers["ratelimit-remaining"] == "3"
