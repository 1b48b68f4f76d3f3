"""Concurrent-job quota per API key: queued plus running jobs are counted in Postgres at each submit.

Over the quota a submit is 429 with Retry-After; a slot frees as soon as one of the key's jobs ends, however it
ends. The count is taken under a lock on the key's row, so concurrent submits cannot overshoot.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.settings import Settings

MakeKey = Callable[..., Any]  # tests/api/conftest.py's make_key: (*scopes, **limits) -> Key(token, id, headers)
BODY = {"model": "tiny-wan", "prompt": "a heron in the reeds"}


def _submit(client: FlaskClient, key: Any) -> Any:
    return client.post("/v1/jobs", json=BODY, headers=key.headers)


def test_over_the_quota_a_submit_is_429_with_retry_after(auth_client: FlaskClient, make_key: MakeKey) -> None:
    key = make_key(max_concurrent_jobs=2)
    assert _submit(auth_client, key).status_code == 202
    assert _submit(auth_client, key).status_code == 202

    refused = _submit(auth_client, key)
    refused_video = auth_client.post("/v1/videos", json={"prompt": "a heron"}, headers=key.headers)

    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["error"]["code"] == "too_many_concurrent_jobs"
    assert refused_video.status_code == 429 and int(refused_video.headers["Retry-After"]) > 0
    assert refused_video.get_json()["error"]["code"] == "too_many_concurrent_jobs"
    assert len(auth_client.get("/v1/jobs", headers=key.headers).get_json()["data"]) == 2


def test_a_slot_frees_when_a_job_ends(auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings) -> None:
    key = make_key(max_concurrent_jobs=2)
    first, second = _submit(auth_client, key).get_json(), _submit(auth_client, key).get_json()
    assert _submit(auth_client, key).status_code == 429

    # A worker runs the first job to the end, through the job store as the worker does.
    store = JobStore(api_settings.database_url, view=lambda job: job_to_dict(job, None))
    assert store.claim(first["id"], "worker-1", lease_seconds=60) is not None
    assert _submit(auth_client, key).status_code == 429  # running still counts
    store.succeed(first["id"], "worker-1", output={"key": "videos/x.mp4"}, stats=None)
    assert _submit(auth_client, key).status_code == 202

    # Canceling a queued job frees its slot at once too.
    assert _submit(auth_client, key).status_code == 429
    assert auth_client.post(f"/v1/jobs/{second['id']}/cancel", headers=key.headers).status_code == 202
    assert _submit(auth_client, key).status_code == 202


def test_the_default_quota_comes_from_the_setting_and_zero_is_unlimited(
    api_settings: Settings, make_key: MakeKey
) -> None:
    client = create_app(dataclasses.replace(api_settings, auth="on", max_concurrent_jobs_per_key=1)).test_client()
    default, unlimited = make_key(), make_key(max_concurrent_jobs=0)

    assert _submit(client, default).status_code == 202
    assert _submit(client, default).status_code == 429
    assert all(_submit(client, unlimited).status_code == 202 for _ in range(3))


def test_other_keys_jobs_do_not_count(auth_client: FlaskClient, make_key: MakeKey) -> None:
    busy, other = make_key(max_concurrent_jobs=1), make_key(max_concurrent_jobs=1)
    assert _submit(auth_client, busy).status_code == 202
    assert _submit(auth_client, busy).status_code == 429

    assert _submit(auth_client, other).status_code == 202


def test_concurrent_submits_never_exceed_the_quota(auth_app: Flask, make_key: MakeKey) -> None:
    key = make_key(max_concurrent_jobs=3)
    start = threading.Barrier(8)
    statuses: list[int] = []

    def submit() -> None:
        client = auth_app.test_client()
        start.wait()
        statuses.append(_submit(client, key).status_code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(statuses) == [202] * 3 + [429] * 5
    assert len(auth_app.test_client().get("/v1/jobs", headers=key.headers).get_json()["data"]) == 3
