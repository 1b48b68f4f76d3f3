"""Admin sign-in attempts are rate-limited per client address, in Redis (shared by every API process): past the
limit a POST is a 429 with Retry-After before the token is even compared, while other addresses sign in.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from flask import Flask

from api.app import create_app
from api.rate_limit import ADMIN_LOGIN_ATTEMPTS_PER_MINUTE
from vidserve.settings import Settings

ADMIN_TOKEN = "login-test-admin-token"


@pytest.fixture
def admin_app(api_settings: Settings) -> Flask:
    # A Redis prefix of its own: each test starts with every address's budget full.
    prefix = f"{api_settings.redis_prefix}login-{uuid.uuid4().hex[:8]}:"
    return create_app(dataclasses.replace(api_settings, admin_token=ADMIN_TOKEN, redis_prefix=prefix))


def _sign_in(app: Flask, token: str, address: str, accept: str = "application/json") -> tuple[int, dict[str, str]]:
    client = app.test_client()
    response = client.post(
        "/admin/login", data={"token": token}, headers={"Accept": accept}, environ_base={"REMOTE_ADDR": address}
    )
    return response.status_code, dict(response.headers)


def test_wrong_tokens_past_the_limit_are_429_and_then_even_the_right_one_waits(admin_app: Flask) -> None:
    statuses = [_sign_in(admin_app, f"guess-{i}", "198.51.100.7")[0] for i in range(ADMIN_LOGIN_ATTEMPTS_PER_MINUTE)]
    assert statuses == [401] * ADMIN_LOGIN_ATTEMPTS_PER_MINUTE

    status, headers = _sign_in(admin_app, "one-more-guess", "198.51.100.7")
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    # Throttled before the comparison: the right token gets the same answer, so guessing learns nothing.
    assert _sign_in(admin_app, ADMIN_TOKEN, "198.51.100.7")[0] == 429


def test_the_limit_is_per_address(admin_app: Flask) -> None:
    for i in range(ADMIN_LOGIN_ATTEMPTS_PER_MINUTE + 1):
        _sign_in(admin_app, f"guess-{i}", "198.51.100.8")

    status, headers = _sign_in(admin_app, ADMIN_TOKEN, "198.51.100.9")
    assert status == 302 and "vidserve_admin=" in headers["Set-Cookie"]


def test_sign_in_page_itself_is_not_counted(admin_app: Flask) -> None:
    client = admin_app.test_client()
    for _ in range(ADMIN_LOGIN_ATTEMPTS_PER_MINUTE + 5):
        assert client.get("/admin/login", environ_base={"REMOTE_ADDR": "198.51.100.10"}).status_code == 200
    assert _sign_in(admin_app, ADMIN_TOKEN, "198.51.100.10")[0] == 302


def test_a_throttled_script_gets_the_json_error_and_a_browser_the_page(admin_app: Flask) -> None:
    for i in range(ADMIN_LOGIN_ATTEMPTS_PER_MINUTE):
        _sign_in(admin_app, f"guess-{i}", "198.51.100.11")
    client = admin_app.test_client()

    script = client.post("/admin/login", data={"token": "x"}, environ_base={"REMOTE_ADDR": "198.51.100.11"})
    browser = client.post(
        "/admin/login",
        data={"token": "x"},
        headers={"Accept": "text/html,application/xhtml+xml"},
        environ_base={"REMOTE_ADDR": "198.51.100.11"},
    )

    assert script.status_code == 429 and script.get_json()["error"]["code"] == "rate_limited"
    assert browser.status_code == 429 and b"sign-in attempts" in browser.data and "Retry-After" in browser.headers


def test_bearer_guesses_on_admin_pages_draw_on_the_same_budget(admin_app: Flask) -> None:
    # The header is a sign-in too: without counting it, the form's limit was bypassed by guessing as a Bearer.
    client = admin_app.test_client()

    def get(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return client.get("/admin/", headers=headers, environ_base={"REMOTE_ADDR": "198.51.100.12"}).status_code

    assert get(ADMIN_TOKEN) == 200  # a right one costs nothing: scripts that poll are not throttled
    assert [get(f"guess-{i}") for i in range(ADMIN_LOGIN_ATTEMPTS_PER_MINUTE)] == [
        401
    ] * ADMIN_LOGIN_ATTEMPTS_PER_MINUTE

    response = client.get(
        "/admin/", headers={"Authorization": "Bearer x"}, environ_base={"REMOTE_ADDR": "198.51.100.12"}
    )
    assert response.status_code == 429 and response.get_json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in response.headers
    assert get(ADMIN_TOKEN) == 429  # throttled before the comparison, as at the form
    assert _sign_in(admin_app, ADMIN_TOKEN, "198.51.100.12")[0] == 429
    assert _sign_in(admin_app, ADMIN_TOKEN, "198.51.100.13")[0] == 302
