"""Every error is JSON `{"error": {"code", "message", ...}}`: Flask's own 404/405 and a database away too.

A database that does not answer is a 503 the client may retry, never a 500 HTML page.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from api.app import create_app
from vidserve.settings import Settings


def test_an_unknown_route_is_a_json_404(client) -> None:
    response = client.get("/v1/nothing-here")

    assert response.status_code == 404
    assert response.is_json
    assert response.get_json()["error"]["code"] == "not_found"


def test_a_wrong_method_is_a_json_405_with_allow(client) -> None:
    response = client.delete("/v1/jobs")

    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/jobs"),
        ("get", f"/v1/jobs/{uuid.uuid4()}"),
        ("post", f"/v1/jobs/{uuid.uuid4()}/cancel"),
        ("get", f"/v1/jobs/{uuid.uuid4()}/content"),
    ],
    ids=["list", "get", "cancel", "content"],
)
def test_a_database_that_is_away_is_a_json_503(api_settings: Settings, method: str, path: str) -> None:
    away = "postgresql+psycopg://postgres@127.0.0.1:1/vidserve"
    client = create_app(dataclasses.replace(api_settings, database_url=away)).test_client()

    response = getattr(client, method)(path)

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"


def test_submit_with_the_database_away_is_a_json_503(api_settings: Settings) -> None:
    away = "postgresql+psycopg://postgres@127.0.0.1:1/vidserve"
    client = create_app(dataclasses.replace(api_settings, database_url=away)).test_client()

    response = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "a fox"})

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
