"""API keys: every job endpoint needs a live bearer key with the right scope, and a key sees only its own jobs.

Requests go through the Flask test client of an app with authentication on (VIDSERVE_AUTH=on); keys are made
with the key store, as `vidserve keys create` makes them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from api.auth import Principal
from vidserve import db
from vidserve.keys import KeyStore
from vidserve.settings import Settings
from vidserve.tools.devserver import auth_banner, local_auth

MakeKey = Callable[..., Any]  # tests/api/conftest.py's make_key: (*scopes, **limits) -> Key(token, id, headers)

# Every job endpoint, with a job id where one is needed (`{id}`): none may answer without a key.
JOB_ENDPOINTS = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/extend"),
    ("GET", "/v1/jobs/{id}/content"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/models"),
    ("POST", "/v1/videos"),
    ("POST", "/v1/videos/extensions"),
    ("GET", "/v1/videos"),
    ("GET", "/v1/videos/{id}"),
    ("GET", "/v1/videos/{id}/content"),
    ("DELETE", "/v1/videos/{id}"),
]
SOME_ID = "00000000-0000-4000-8000-000000000000"


def job_body() -> dict[str, Any]:
    return {"model": "tiny-wan", "prompt": "a red fox running through snow"}


def _error_code(response: Any) -> str:
    return response.get_json()["error"]["code"]


@pytest.mark.parametrize(("method", "path"), JOB_ENDPOINTS)
def test_every_job_endpoint_without_a_key_is_401_with_a_bearer_challenge(
    auth_client: FlaskClient, method: str, path: str
) -> None:
    response = auth_client.open(path.format(id=SOME_ID), method=method, json={"prompt": "x"})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="vidserve"'
    assert _error_code(response) == "unauthorized"


def test_no_v1_route_of_the_app_answers_without_a_key(auth_app: Flask, auth_client: FlaskClient) -> None:
    routes = [
        (rule.rule, method)
        for rule in auth_app.url_map.iter_rules()
        if rule.rule.startswith("/v1/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    ]
    assert len(routes) >= len(JOB_ENDPOINTS)

    for path, method in routes:
        url = re.sub(r"<(?:\w+:)?\w+>", SOME_ID, path)
        assert auth_client.open(url, method=method, json={}).status_code == 401, (method, path)


@pytest.mark.parametrize(
    "header",
    ["Bearer vs_not-a-key-that-exists", "Bearer not-even-our-format", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   "],
)
def test_an_unknown_or_malformed_credential_is_401(auth_client: FlaskClient, header: str) -> None:
    response = auth_client.get("/v1/jobs", headers={"Authorization": header})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="vidserve"')
    assert _error_code(response) == "unauthorized"


def test_health_metrics_and_openapi_stay_open(auth_client: FlaskClient) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert auth_client.get(path).status_code == 200, path


def test_a_key_works_and_only_its_hash_is_stored(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()

    assert auth_client.get("/v1/models", headers=key.headers).status_code == 200
    with db.get_engine(api_settings.database_url).connect() as conn:
        row = conn.execute(
            text("SELECT prefix, token_sha256, last_used_at, t::text AS whole FROM api_keys t WHERE id = :id"),
            {"id": key.id},
        ).one()
        everything = conn.execute(text("SELECT string_agg(t::text, '') FROM api_keys t")).scalar_one()
    assert key.token.startswith("vs_") and len(key.token) > 40
    assert key.token not in everything
    assert key.token[len(row.prefix) :] not in everything  # no more of the token than its display prefix
    assert row.token_sha256 == hashlib.sha256(key.token.encode()).hexdigest()
    assert key.token.startswith(row.prefix) and len(row.prefix) == 11
    assert row.last_used_at is not None


def test_a_revoked_key_is_refused_at_the_next_request(
    auth_client: FlaskClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key = make_key()
    assert auth_client.get("/v1/jobs", headers=key.headers).status_code == 200

    KeyStore(api_settings.database_url).revoke(str(key.id))

    response = auth_client.get("/v1/jobs", headers=key.headers)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("scopes", "method", "path", "needed"),
    [
        (("jobs:read",), "POST", "/v1/jobs", "jobs:write"),
        (("jobs:read",), "POST", "/v1/jobs/{id}/cancel", "jobs:write"),
        (("jobs:read",), "DELETE", "/v1/videos/{id}", "jobs:write"),
        (("jobs:write",), "GET", "/v1/jobs", "jobs:read"),
        (("jobs:write",), "GET", "/v1/jobs/{id}/events", "jobs:read"),
        (("jobs:write",), "GET", "/v1/models", "jobs:read"),
    ],
)
def test_a_key_without_the_scope_is_403(
    auth_client: FlaskClient, make_key: MakeKey, scopes: tuple[str, ...], method: str, path: str, needed: str
) -> None:
    key = make_key(*scopes)

    response = auth_client.open(path.format(id=SOME_ID), method=method, headers=key.headers, json=job_body())

    assert response.status_code == 403
    assert _error_code(response) == "insufficient_scope"
    assert f'scope="{needed}"' in response.headers["WWW-Authenticate"]


def test_the_openai_api_answers_auth_errors_in_openai_shape(auth_client: FlaskClient, make_key: MakeKey) -> None:
    missing = auth_client.get("/v1/videos")
    read_only = auth_client.post("/v1/videos", json={"prompt": "x"}, headers=make_key("jobs:read").headers)

    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "unauthorized"
    assert missing.get_json()["error"]["type"] == "invalid_request_error"
    assert read_only.status_code == 403 and read_only.get_json()["error"]["code"] == "insufficient_scope"


def test_the_openai_sdk_sends_its_api_key_as_the_bearer_token(auth_app: Flask, make_key: MakeKey) -> None:
    def sdk(api_key: str) -> openai.OpenAI:
        http = httpx2.Client(transport=httpx2.WSGITransport(app=auth_app), base_url="http://vidserve.test")
        return openai.OpenAI(base_url="http://vidserve.test/v1", api_key=api_key, http_client=http, max_retries=0)

    video = sdk(make_key().token).videos.create(prompt="a paper boat", model="tiny-wan")
    assert video.status == "queued"

    with pytest.raises(openai.AuthenticationError):
        sdk("vs_wrong").videos.retrieve(video.id)


def test_a_key_sees_lists_and_cancels_only_its_own_jobs(auth_client: FlaskClient, make_key: MakeKey) -> None:
    alice, bob = make_key(), make_key()
    job = auth_client.post("/v1/jobs", json=job_body(), headers=alice.headers).get_json()
    video = auth_client.post("/v1/videos", json={"prompt": "a kite", "model": "tiny-wan"}, headers=alice.headers)
    video_id = video.get_json()["id"]

    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/content"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/videos/{video_id}"),
        ("GET", f"/v1/videos/{video_id}/content"),
        ("DELETE", f"/v1/videos/{video_id}"),
        ("GET", f"/v1/videos?after={video_id}"),
    ]:
        response = auth_client.open(path, method=method, headers=bob.headers)
        # As for an unknown id (the list's `after` anchor: 400), never 403: other keys' ids must not leak.
        assert response.status_code == (400 if "after" in path else 404), (method, path)

    bobs_jobs = auth_client.get("/v1/jobs?limit=100", headers=bob.headers).get_json()["data"]
    bobs_videos = auth_client.get("/v1/videos?limit=100", headers=bob.headers).get_json()["data"]
    assert {job["id"], video_id}.isdisjoint({j["id"] for j in bobs_jobs} | {v["id"] for v in bobs_videos})

    # Alice's jobs are untouched by Bob's attempts, and she sees both.
    alices_jobs = {j["id"]: j for j in auth_client.get("/v1/jobs?limit=100", headers=alice.headers).get_json()["data"]}
    assert alices_jobs[job["id"]]["status"] == "queued" and video_id in alices_jobs
    alices_videos = auth_client.get("/v1/videos?limit=100", headers=alice.headers).get_json()["data"]
    assert {v["id"] for v in alices_videos} == set(alices_jobs)
    assert auth_client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice.headers).status_code == 202


def test_an_admin_key_sees_and_cancels_every_job(auth_client: FlaskClient, make_key: MakeKey) -> None:
    alice, admin = make_key(), make_key("admin")
    job = auth_client.post("/v1/jobs", json=job_body(), headers=alice.headers).get_json()

    assert auth_client.get(f"/v1/jobs/{job['id']}", headers=admin.headers).status_code == 200
    listed = auth_client.get("/v1/jobs?limit=100", headers=admin.headers).get_json()["data"]
    assert job["id"] in {j["id"] for j in listed}
    canceled = auth_client.post(f"/v1/jobs/{job['id']}/cancel", headers=admin.headers)
    assert canceled.status_code == 202 and canceled.get_json()["status"] == "canceled"


def test_with_auth_off_the_anonymous_caller_sees_every_job(
    client: FlaskClient, auth_client: FlaskClient, make_key: MakeKey
) -> None:
    alice = make_key()
    job = auth_client.post("/v1/jobs", json=job_body(), headers=alice.headers).get_json()

    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200  # `client`'s app runs with VIDSERVE_AUTH=off


def test_the_principal_of_a_request_is_the_key(auth_app: Flask, make_key: MakeKey) -> None:
    key = make_key("jobs:read", max_concurrent_jobs=3, rate_limit_per_minute=7)
    seen: list[Principal] = []

    with auth_app.test_request_context("/v1/jobs", headers=key.headers):
        auth_app.preprocess_request()
        from flask import g

        seen.append(g.principal)

    assert seen[0] == Principal(
        key_id=str(key.id),
        name=seen[0].name,
        scopes=frozenset({"jobs:read"}),
        rate_limit_per_minute=7,
        max_concurrent_jobs=3,
    )


def test_auth_is_on_unless_switched_off_and_only_on_or_off_is_accepted() -> None:
    assert Settings.from_env({}).auth == "on"
    assert Settings.from_env({"VIDSERVE_AUTH": "off"}).auth == "off"
    with pytest.raises(ValueError, match="VIDSERVE_AUTH"):
        Settings.from_env({"VIDSERVE_AUTH": "disabled"})


def test_make_run_turns_auth_off_with_a_banner_unless_told_otherwise() -> None:
    assert local_auth({}) == "off"
    assert local_auth({"VIDSERVE_AUTH": "on"}) == "on"

    off = "\n".join(auth_banner(Settings(auth="off")))
    on = "\n".join(auth_banner(Settings(auth="on")))
    assert "AUTHENTICATION IS OFF" in off and "VIDSERVE_AUTH=on" in off and "vidserve keys create" in off
    assert "AUTHENTICATION IS OFF" not in on and "vidserve keys create" in on


def test_the_openapi_document_names_the_key_and_scope_of_every_keyed_operation(auth_client: FlaskClient) -> None:
    doc = auth_client.get("/openapi.json").get_json()

    assert doc["components"]["securitySchemes"]["apiKey"] == {
        **doc["components"]["securitySchemes"]["apiKey"],
        "type": "http",
        "scheme": "bearer",
    }
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if path.startswith("/v1/"):
                [requirement] = operation["security"]
                assert requirement["apiKey"][0] in ("jobs:read", "jobs:write", "admin"), (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            else:
                assert "security" not in operation, (method, path)
    assert doc["paths"]["/v1/jobs"]["post"]["security"] == [{"apiKey": ["jobs:write"]}]
    assert doc["paths"]["/v1/jobs"]["get"]["security"] == [{"apiKey": ["jobs:read"]}]
    for submit in (doc["paths"]["/v1/jobs"]["post"], doc["paths"]["/v1/videos"]["post"]):
        assert "Idempotency-Key" in {p["name"] for p in submit["parameters"]}
        assert {"400", "409", "422", "429"} <= set(submit["responses"])
        assert "Retry-After" in submit["responses"]["429"]["headers"]


def test_the_admin_dashboard_also_takes_an_admin_key(auth_client: FlaskClient, make_key: MakeKey) -> None:
    job = auth_client.post("/v1/jobs", json=job_body(), headers=make_key().headers).get_json()
    path = f"/admin/jobs/{job['id']}.json"  # this app has no VIDSERVE_ADMIN_TOKEN: the dashboard is locked

    assert auth_client.get(path, headers=make_key("admin").headers).get_json()["id"] == job["id"]
    assert auth_client.get(path, headers=make_key("jobs:read", "jobs:write").headers).status_code == 403
    assert auth_client.get(path).status_code == 403
