"""/healthz says the process answers; /readyz checks Postgres, Redis and S3 and names what failed (503).

Failures are real: an S3 server of the test's own is stopped, and URLs point at ports where nothing listens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from api.app import create_app
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from vidserve.tools.s3server import start_s3_server

NOTHING_LISTENS = "127.0.0.1:1"


def test_healthz_answers_200(client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_answers_200_when_postgres_redis_and_s3_answer(client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["failed"] == []
    assert body["checks"] == {"postgres": {"ok": True}, "redis": {"ok": True}, "s3": {"ok": True}}


def test_readyz_answers_503_naming_s3_when_the_s3_server_stops(api_settings: Settings, tmp_path: Path) -> None:
    server = start_s3_server(tmp_path, api_settings.s3_access_key, api_settings.s3_secret_key)
    try:
        settings = dataclasses.replace(api_settings, s3_endpoint=server.endpoint)
        VideoStore(settings).ensure_bucket()
        client = create_app(settings).test_client()
        assert client.get("/readyz").status_code == 200

        server.stop()
        response = client.get("/readyz")
    finally:
        server.stop()

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["s3"]
    assert body["checks"]["s3"]["ok"] is False and body["checks"]["s3"]["error"]
    assert body["checks"]["postgres"] == {"ok": True}


def test_readyz_names_s3_when_its_bucket_is_missing(api_settings: Settings) -> None:
    client = create_app(dataclasses.replace(api_settings, s3_bucket="no-such-bucket-here")).test_client()

    body = client.get("/readyz").get_json()

    assert body["failed"] == ["s3"]
    assert "no-such-bucket-here" in body["checks"]["s3"]["error"]


def test_readyz_names_redis_when_redis_is_away(api_settings: Settings) -> None:
    client = create_app(dataclasses.replace(api_settings, redis_url=f"redis://{NOTHING_LISTENS}/0")).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["failed"] == ["redis"]


def test_readyz_names_postgres_when_the_database_is_away(api_settings: Settings) -> None:
    away = f"postgresql+psycopg://postgres@{NOTHING_LISTENS}/vidserve"
    client = create_app(dataclasses.replace(api_settings, database_url=away)).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["failed"] == ["postgres"]
