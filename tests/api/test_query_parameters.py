"""Integer query parameters on every surface: one parser, so a value that is not plain ASCII digits in range is
a 4xx naming the parameter everywhere (`/v1/jobs`, `/v1/videos`, the admin dashboard), never a 500.
"""

from __future__ import annotations

import dataclasses

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from vidserve.settings import Settings

ADMIN_TOKEN = "query-test-admin-token"
# "²" and "٣" pass str.isdigit() but are no ASCII digits; the rest are the ordinary ways to be wrong.
BAD_INTEGERS = ["%C2%B2", "%D9%A3", "%EF%BC%95", "", "0", "-1", "+5", "1.0", "ten", " 5", "9" * 40]


@pytest.fixture(scope="module")
def admin_app(api_settings: Settings) -> Flask:
    return create_app(dataclasses.replace(api_settings, admin_token=ADMIN_TOKEN))


@pytest.mark.parametrize("value", BAD_INTEGERS)
def test_jobs_list_refuses_a_bad_limit_with_422_naming_it(client: FlaskClient, value: str) -> None:
    response = client.get(f"/v1/jobs?limit={value}")

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "limit"


@pytest.mark.parametrize("value", BAD_INTEGERS)
def test_openai_list_refuses_a_bad_limit_with_400_naming_it(client: FlaskClient, value: str) -> None:
    response = client.get(f"/v1/videos?limit={value}")

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["param"], error["code"]) == ("limit", "invalid_value")


@pytest.mark.parametrize("value", BAD_INTEGERS)
def test_admin_jobs_page_refuses_a_bad_page_with_422_naming_it(admin_app: Flask, value: str) -> None:
    response = admin_app.test_client().get(f"/admin/?page={value}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "page"


def test_good_integers_are_read_on_every_surface(client: FlaskClient, admin_app: Flask, submit) -> None:
    for _ in range(2):
        submit()
    assert len(client.get("/v1/jobs?limit=1").get_json()["data"]) == 1
    assert len(client.get("/v1/videos?limit=2").get_json()["data"]) == 2
    page = admin_app.test_client().get("/admin/?page=1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert page.status_code == 200 and b"page 1 of" in page.data


@pytest.mark.parametrize("name", ["model", "q"])
@pytest.mark.parametrize("value", ["%00", "a%00b"], ids=["nul", "inner-nul"])
def test_admin_text_filters_refuse_what_postgres_cannot_compare_with_422(
    admin_app: Flask, name: str, value: str
) -> None:
    # Found by tests/fuzz/test_hostile_values.py: a NUL in the model filter reached the SQL and answered 500.
    response = admin_app.test_client().get(
        f"/admin/?{name}={value}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == name
