"""Hostile and malformed input to the submit endpoints: always a 4xx JSON error naming the field, never a 500,
never a stored job. (Per-field rules, one case each, are in test_validation.py; this file covers the shapes a
fuzzer or an attacker sends, and the bugs the OpenAPI fuzzer found, each pinned here.)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from vidserve.settings import Settings

FOX = "a red fox running through snow"


def _post(client: FlaskClient, body: bytes, content_type: str = "application/json") -> Any:
    return client.post("/v1/jobs", data=body, content_type=content_type)


def _job(**fields: Any) -> bytes:
    return json.dumps({"model": "tiny-wan", "prompt": FOX, **fields}).encode()


@pytest.fixture
def no_new_jobs(count_jobs):
    before = count_jobs()
    yield
    assert count_jobs() == before, "a refused request stored a job"


# ---- bodies that are not a JSON object: 400 malformed_body ----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "tiny-wan", "prompt": "\xff\xfe fox"}',  # not UTF-8
        b'{"model": "tiny-wan", "prompt": "fox", "guidance_scale": Infinity}',
        b'{"model": "tiny-wan", "prompt": "fox", "guidance_scale": -Infinity}',
        b"[" * 20000 + b"]" * 20000,  # nested deeper than any parser's recursion
        b'{"model": "tiny-wan", "prompt": "fox", "seed": ' + b"9" * 5000 + b"}",  # beyond int parsing's limit
        b"null",
        b"true",
    ],
    ids=[
        "invalid-utf8",
        "Infinity",
        "-Infinity",
        "deep-array",
        "5000-digits",
        "null",
        "true",
    ],
)
def test_a_body_that_is_no_json_object_is_a_400(client: FlaskClient, no_new_jobs, body: bytes) -> None:
    response = _post(client, body)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_body"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<job><model>tiny-wan</model></job>", "application/xml"),
        (b"model=tiny-wan&prompt=fox", "application/x-www-form-urlencoded"),
        (
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny-wan\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ],
    ids=["xml", "form", "multipart"],
)
def test_a_body_of_another_media_type_is_a_400(
    client: FlaskClient, no_new_jobs, body: bytes, content_type: str
) -> None:
    # The media type is not checked (curl -d sends form-urlencoded); the body must be a JSON object.
    response = _post(client, body, content_type)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_body"


# ---- fields of the wrong kind or out of range: 422 naming the field ----------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"prompt": "fox \x07 bell"}, "prompt", "control characters"),
        ({"prompt": "\x1b[31mred fox"}, "prompt", "control characters"),
        ({"prompt": "fox\x85"}, "prompt", "control characters"),
        ({"negative_prompt": "blur\x7f"}, "negative_prompt", "control characters"),
        ({"negative_prompt": "blur\x00"}, "negative_prompt", "NUL"),
        ({"negative_prompt": "blur\ud800"}, "negative_prompt", "valid Unicode"),
        ({"model": "tiny-wan\x00"}, "model", "NUL"),
        ({"guidance_scale": True}, "guidance_scale", "must be a number"),
        ({"seed": False}, "seed", "must be an integer"),
        ({"fps": "8"}, "fps", "must be an integer"),
        ({"num_inference_steps": "4"}, "num_inference_steps", "must be an integer"),
        ({"width": [32]}, "width", "must be an integer"),
        ({"num_frames": 10**100}, "num_frames", "between 1 and 161"),
        ({"num_inference_steps": 2**64}, "num_inference_steps", "between 1 and 50"),
        ({"seed": 1e300}, "seed", "between 0 and"),
        ({"fps": 1e-300}, "fps", "must be an integer"),
        ({"webhook_events": "job.succeeded"}, "webhook_events", "must be a JSON array"),
        ({"cache": {"policy": {"name": "first_block"}}}, "cache.policy", "must be one of"),
        ({"cache": {"policy": ["first_block"]}}, "cache.policy", "must be one of"),
        ({"cache": {"policy": "first_block", "threshold": "0.1"}}, "cache.threshold", "must be a number"),
    ],
    ids=[
        "prompt-bell",
        "prompt-escape-sequence",
        "prompt-c1-control",
        "negative-prompt-del",
        "negative-prompt-nul",
        "negative-prompt-surrogate",
        "model-nul",
        "bool-as-number",
        "bool-as-integer",
        "fps-string",
        "steps-string",
        "width-array",
        "frames-googol",
        "steps-2**64",
        "seed-1e300",
        "fps-tiny-float",
        "events-not-array",
        "cache-policy-object",
        "cache-policy-array",
        "cache-setting-string",
    ],
)
def test_a_field_of_the_wrong_kind_is_a_422_naming_it(
    client: FlaskClient, no_new_jobs, fields: dict[str, Any], field: str, rule: str
) -> None:
    response = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX, **fields})

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("invalid_field", field)
    assert rule in error["rule"]


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400"], ids=["1e400", "-1e400"])
def test_a_number_too_large_for_a_float_is_a_422(client: FlaskClient, no_new_jobs, literal: bytes) -> None:
    # JSON allows it; Python reads it as an infinite float, which no range admits.
    response = _post(client, b'{"model": "tiny-wan", "prompt": "fox", "guidance_scale": ' + literal + b"}")

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "guidance_scale"


def test_a_utf8_encoded_lone_surrogate_is_a_422(client: FlaskClient, no_new_jobs) -> None:
    # Python's JSON reader lets it through as the lone surrogate itself; Postgres could not store it.
    response = _post(client, b'{"model": "tiny-wan", "prompt": "fox \xed\xa0\x80"}')

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "prompt"
    assert "valid Unicode" in response.get_json()["error"]["rule"]


def test_a_megabyte_prompt_is_a_413_under_the_default_body_limit(client: FlaskClient, no_new_jobs) -> None:
    response = _post(client, _job(prompt="fox " * 262144))

    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "body_too_large"


def test_a_megabyte_prompt_is_a_422_when_the_body_limit_admits_it(api_settings: Settings, count_jobs) -> None:
    app = create_app(dataclasses.replace(api_settings, max_body_bytes=4 * 1024 * 1024))
    before = count_jobs()

    response = app.test_client().post("/v1/jobs", data=_job(prompt="fox " * 262144), content_type="application/json")

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "prompt"
    assert "at most 200 characters" in response.get_json()["error"]["rule"]
    assert count_jobs() == before


def test_the_openai_create_refuses_control_characters_in_its_shape(client: FlaskClient, no_new_jobs) -> None:
    response = client.post("/v1/videos", json={"model": "tiny-wan", "prompt": "fox\x1b[2J"})

    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "prompt"


# ---- what the schema allows is accepted (fuzzer findings) ------------------------------------------------


def test_tab_and_line_breaks_are_fine_in_a_prompt(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "a fox\n\trunning\r\nin snow"})

    assert response.status_code == 202
    assert response.get_json()["params"]["prompt"] == "a fox\n\trunning\r\nin snow"


def test_a_cache_setting_given_as_null_takes_its_default(client: FlaskClient, document: dict[str, Any]) -> None:
    # The OpenAPI document says null (as for the top-level fields): the fuzzer sent it and expected a 202.
    policies = document["components"]["schemas"]["CachePolicy"]["oneOf"]
    taylorseer = next(p for p in policies if p["properties"]["policy"]["const"] == "taylorseer")
    assert "null" in taylorseer["properties"]["order"]["type"]

    response = client.post(
        "/v1/jobs", json={"model": "tiny-wan", "prompt": FOX, "cache": {"policy": "taylorseer", "order": None}}
    )

    assert response.status_code == 202
    assert response.get_json()["params"]["cache"]["order"] == taylorseer["properties"]["order"]["default"]


def test_a_null_model_is_the_default_model_as_documented(client: FlaskClient, document: dict[str, Any]) -> None:
    # The fuzzer sent "model": null, which the server took as absent while the document refused it.
    default = next(m["name"] for m in client.get("/v1/models").get_json()["data"] if m["default"])
    schema = document["components"]["schemas"][f"JobRequest.{default}"]
    assert None in schema["properties"]["model"]["enum"]

    response = client.post("/v1/jobs", json={"model": None, "prompt": FOX})

    assert response.status_code == 202
    assert response.get_json()["model"] == default


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    return client.get("/openapi.json").get_json()
