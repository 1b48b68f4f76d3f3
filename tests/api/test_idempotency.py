"""The Idempotency-Key header on submits: a repeat replays the first response, never makes a second job.

Same key and body: the stored response again (`Idempotent-Replayed: true`); same key, other body: 422; the
first request still in flight: 409. Keys belong to one API key; records expire. Real HTTP, real Postgres.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from api.idempotency import ANONYMOUS_OWNER, IN_FLIGHT_TIMEOUT, IdempotencyStore, fingerprint
from vidserve import db
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.settings import Settings

MakeKey = Callable[..., Any]  # tests/api/conftest.py's make_key: (*scopes, **limits) -> Key(token, id, headers)
BODY = {"model": "tiny-wan", "prompt": "a lantern on a pier"}
# BODY's job as the API stores it (the tiny model's defaults applied).
PARAMS = {**BODY, "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4, "guidance_scale": 5.0}
PARAMS = {name: value for name, value in PARAMS.items() if name != "model"} | {"seed": 7, "fps": 8}


def _jobs_of(settings: Settings, key_id: Any) -> int:
    with db.get_engine(settings.database_url).connect() as conn:
        return conn.execute(text("SELECT count(*) FROM jobs WHERE api_key_id = :k"), {"k": key_id}).scalar_one()


def _outlive_in_flight_timeout(settings: Settings, key_id: Any, idempotency_key: str) -> None:
    """Age a claim past IN_FLIGHT_TIMEOUT, as if its request had died that long ago."""
    with db.get_engine(settings.database_url).begin() as conn:
        conn.execute(
            text("UPDATE idempotency_keys SET created_at = now() - :age WHERE owner = :o AND key = :k"),
            {"age": IN_FLIGHT_TIMEOUT + dt.timedelta(seconds=1), "o": str(key_id), "k": idempotency_key},
        )


def test_a_repeat_with_the_same_body_replays_the_first_response(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()
    headers = {**key.headers, "Idempotency-Key": "order-1"}

    first = auth_client.post("/v1/jobs", json=BODY, headers=headers)
    # The same JSON object written differently (key order, spacing) is the same request.
    again = auth_client.post(
        "/v1/jobs",
        data='{"prompt":"a lantern on a pier",  "model":"tiny-wan"}',
        headers=headers,
        content_type="application/json",
    )

    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert _jobs_of(api_settings, key.id) == 1


def test_the_same_key_with_another_body_is_422(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()
    headers = {**key.headers, "Idempotency-Key": "order-2"}
    assert auth_client.post("/v1/jobs", json=BODY, headers=headers).status_code == 202

    other = auth_client.post("/v1/jobs", json={**BODY, "prompt": "something else"}, headers=headers)
    # The same key on the other submit endpoint is another request too.
    other_endpoint = auth_client.post("/v1/videos", json={"prompt": BODY["prompt"]}, headers=headers)

    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert other_endpoint.status_code == 422 and other_endpoint.get_json()["error"]["code"] == "idempotency_key_reused"
    assert _jobs_of(api_settings, key.id) == 1


def test_a_request_while_the_first_is_in_flight_is_409(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()
    # The first request's row, as it stands while that request runs: claimed, no response yet.
    store = IdempotencyStore(api_settings.database_url)
    with auth_client.application.test_request_context("/v1/jobs", method="POST", json=BODY):
        store.begin(str(key.id), "order-3", fingerprint(), 3600)

    response = auth_client.post("/v1/jobs", json=BODY, headers={**key.headers, "Idempotency-Key": "order-3"})

    assert response.status_code == 409 and response.get_json()["error"]["code"] == "idempotency_key_in_use"
    assert _jobs_of(api_settings, key.id) == 0


def test_concurrent_requests_with_one_key_make_one_job(
    auth_app: Flask, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()
    headers = {**key.headers, "Idempotency-Key": "order-4"}
    start = threading.Barrier(6)
    statuses: list[int] = []

    def submit() -> None:
        client = auth_app.test_client()
        start.wait()
        statuses.append(client.post("/v1/jobs", json=BODY, headers=headers).status_code)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert statuses.count(202) >= 1 and set(statuses) <= {202, 409}
    assert _jobs_of(api_settings, key.id) == 1


def test_keys_belong_to_one_api_key(auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings) -> None:
    alice, bob = make_key(), make_key()

    a = auth_client.post("/v1/jobs", json=BODY, headers={**alice.headers, "Idempotency-Key": "shared"})
    b = auth_client.post("/v1/jobs", json=BODY, headers={**bob.headers, "Idempotency-Key": "shared"})

    assert a.status_code == b.status_code == 202
    assert a.get_json()["id"] != b.get_json()["id"] and "Idempotent-Replayed" not in b.headers


def test_a_claim_left_in_flight_by_a_dead_request_is_taken_over(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()
    store = IdempotencyStore(api_settings.database_url)
    with auth_client.application.test_request_context("/v1/jobs", method="POST", json=BODY):
        store.begin(str(key.id), "order-4", fingerprint(), 3600)
    # The API process that claimed it died: nothing will ever finish or abandon the claim.
    _outlive_in_flight_timeout(api_settings, key.id, "order-4")

    response = auth_client.post("/v1/jobs", json=BODY, headers={**key.headers, "Idempotency-Key": "order-4"})

    assert response.status_code == 202, response.get_json()
    assert _jobs_of(api_settings, key.id) == 1
    replay = auth_client.post("/v1/jobs", json=BODY, headers={**key.headers, "Idempotency-Key": "order-4"})
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.get_json()["id"] == response.get_json()["id"]


def test_a_request_that_died_after_storing_its_job_is_answered_from_that_job(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()
    store = IdempotencyStore(api_settings.database_url)
    with auth_client.application.test_request_context("/v1/jobs", method="POST", json=BODY):
        record_id = store.begin(str(key.id), "order-5", fingerprint(), 3600)
    # The dead request got as far as committing its job (linked to the key in the same transaction) and died
    # before it could store its response.
    jobs = JobStore(api_settings.database_url, job_to_dict)
    stored = jobs.create(model="tiny-wan", params=PARAMS, api_key_id=key.id, idempotency_record_id=record_id)
    headers = {**key.headers, "Idempotency-Key": "order-5"}
    assert auth_client.post("/v1/jobs", json=BODY, headers=headers).status_code == 409  # it may still answer
    _outlive_in_flight_timeout(api_settings, key.id, "order-5")

    retry = auth_client.post("/v1/jobs", json=BODY, headers=headers)

    assert retry.status_code == 202, retry.get_json()
    assert retry.get_json()["id"] == str(stored.id) and retry.headers["Location"].endswith(str(stored.id))
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert _jobs_of(api_settings, key.id) == 1
    again = auth_client.post("/v1/jobs", json=BODY, headers=headers)
    assert again.get_json() == retry.get_json() and _jobs_of(api_settings, key.id) == 1


def test_a_quota_refusal_keeps_no_link_so_the_key_can_be_retried(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key(max_concurrent_jobs=1)
    assert auth_client.post("/v1/jobs", json=BODY, headers=key.headers).status_code == 202
    headers = {**key.headers, "Idempotency-Key": "order-6"}

    assert auth_client.post("/v1/jobs", json=BODY, headers=headers).status_code == 429
    with db.get_engine(api_settings.database_url).connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM idempotency_keys WHERE key = 'order-6'")).scalar_one()
    assert left == 0


def test_an_expired_key_starts_afresh(auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings) -> None:
    key = make_key()
    headers = {**key.headers, "Idempotency-Key": "order-5"}
    first = auth_client.post("/v1/jobs", json=BODY, headers=headers).get_json()
    with db.get_engine(api_settings.database_url).begin() as conn:
        conn.execute(
            text("UPDATE idempotency_keys SET expires_at = :t WHERE owner = :o AND key = 'order-5'"),
            {"t": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), "o": str(key.id)},
        )

    second = auth_client.post("/v1/jobs", json=BODY, headers=headers)

    assert second.status_code == 202 and second.get_json()["id"] != first["id"]
    assert "Idempotent-Replayed" not in second.headers


def test_records_expire_after_the_setting(auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings) -> None:
    key = make_key()
    auth_client.post("/v1/jobs", json=BODY, headers={**key.headers, "Idempotency-Key": "order-6"})

    with db.get_engine(api_settings.database_url).connect() as conn:
        lifetime = conn.execute(
            text("SELECT expires_at - created_at FROM idempotency_keys WHERE owner = :o"), {"o": str(key.id)}
        ).scalar_one()

    assert abs(lifetime.total_seconds() - api_settings.idempotency_ttl_seconds) < 5


def test_a_failed_request_keeps_nothing_so_its_key_can_be_retried(auth_client: FlaskClient, make_key: MakeKey) -> None:
    key = make_key()
    headers = {**key.headers, "Idempotency-Key": "order-7"}

    refused = auth_client.post("/v1/jobs", json={**BODY, "num_frames": 10_000}, headers=headers)
    retried = auth_client.post("/v1/jobs", json=BODY, headers=headers)

    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "invalid_field"
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers


@pytest.mark.parametrize("value", ["", "   ", "x" * 256, "tab\there"])
def test_a_malformed_key_is_400(auth_client: FlaskClient, make_key: MakeKey, value: str) -> None:
    response = auth_client.post("/v1/jobs", json=BODY, headers={**make_key().headers, "Idempotency-Key": value})

    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_idempotency_key"


def test_a_key_of_255_characters_and_a_quoted_key_are_accepted(auth_client: FlaskClient, make_key: MakeKey) -> None:
    key = make_key()
    long_key = auth_client.post("/v1/jobs", json=BODY, headers={**key.headers, "Idempotency-Key": "k" * 255})
    quoted = auth_client.post("/v1/jobs", json=BODY, headers={**key.headers, "Idempotency-Key": '"order-8"'})
    bare = auth_client.post("/v1/jobs", json=BODY, headers={**key.headers, "Idempotency-Key": "order-8"})

    assert long_key.status_code == quoted.status_code == 202
    assert bare.headers.get("Idempotent-Replayed") == "true"  # "order-8" as an sf-string is the key order-8


def test_the_openai_create_replays_too(auth_client: FlaskClient, make_key: MakeKey) -> None:
    headers = {**make_key().headers, "Idempotency-Key": "video-1"}
    form = {"prompt": "a windmill", "model": "tiny-wan", "seconds": "1"}

    first = auth_client.post("/v1/videos", data=form, headers=headers)
    again = auth_client.post("/v1/videos", data=form, headers=headers)
    other = auth_client.post("/v1/videos", data={**form, "seconds": "2"}, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert other.get_json()["error"]["type"] == "invalid_request_error"  # OpenAI's error shape


def test_with_auth_off_keys_belong_to_the_anonymous_caller(client: FlaskClient, api_settings: Settings) -> None:
    headers = {"Idempotency-Key": "anonymous-1"}
    first = client.post("/v1/jobs", json=BODY, headers=headers)
    again = client.post("/v1/jobs", json=BODY, headers=headers)

    assert again.get_json()["id"] == first.get_json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    with db.get_engine(api_settings.database_url).connect() as conn:
        owner = conn.execute(text("SELECT owner FROM idempotency_keys WHERE key = 'anonymous-1'")).scalar_one()
    assert owner == ANONYMOUS_OWNER
