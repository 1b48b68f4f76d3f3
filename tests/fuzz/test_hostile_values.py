"""Property tests beside the schemathesis suite, for the inputs it rarely makes: every query parameter and every
body field that /openapi.json lists, given digits that are not ASCII ("²", "٣", "５"), arbitrary Unicode, or
JSON nested from one to thousands of levels, answers 2xx or a 4xx JSON error; never a 5xx.

`VIDSERVE_FUZZ_EXAMPLES` sets the examples per parameter (the suite: 30; `make fuzz`: 300).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from vidserve.settings import Settings

EXAMPLES = int(os.environ.get("VIDSERVE_FUZZ_EXAMPLES", "30"))
DOCUMENT: dict[str, Any] = create_app(Settings()).test_client().get("/openapi.json").get_json()
# The event stream stays open until its job ends (no worker runs here); /metrics takes no parameters.
SKIPPED_PATHS = ("/events", "/metrics")
VALID_BODY = {"prompt": "a red fox running through snow"}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _properties(schema: dict[str, Any]) -> set[str]:
    schema = _resolve(schema)
    names = set(schema.get("properties", {}))
    for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
        names |= _properties(alternative)
    return names


def _operations(method: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, item[method])
        for path, item in DOCUMENT["paths"].items()
        if method in item and not path.endswith(SKIPPED_PATHS)
    ]


QUERY_PARAMETERS = sorted(
    (path, parameter["name"])
    for path, operation in _operations("get")
    for parameter in operation.get("parameters", [])
    if parameter["in"] == "query"
)
BODY_FIELDS = sorted(
    (path, media_type, name)
    for path, operation in _operations("post")
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items()
    for name in _properties(content["schema"])
)

# Digits, numerals and numeric signs beyond ASCII: str.isdigit() admits some (superscripts), int() others.
not_ascii_digits = st.text(
    st.one_of(
        st.sampled_from("²³¹⁰₉①٣۴५০５𝟗"),
        st.characters(categories=["Nd", "No", "Nl"], exclude_characters="0123456789"),
    ),
    min_size=1,
    max_size=6,
)
any_text = st.text(st.characters(codec="utf-8"), max_size=40)
hostile_text = st.one_of(not_ascii_digits, any_text, st.builds(lambda d, t: d + t, not_ascii_digits, any_text))


def _nested(depth: int, opener: str, leaf: str) -> str:
    """Raw JSON text nesting `depth` levels (written out: encoding it with json.dumps would recurse itself)."""
    closer = "]" if opener == "[" else "}"
    return (opener if opener == "[" else '{"k": ') * depth + leaf + closer * depth


deep_json = st.builds(_nested, st.integers(1, 3000), st.sampled_from(["[", "{"]), hostile_text.map(json.dumps))
hostile_json = st.one_of(hostile_text.map(json.dumps), deep_json)

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _assert_no_server_error(response: Any) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        assert "error" in response.get_json(), response.get_data(as_text=True)[:500]


def test_the_document_lists_parameters_and_fields_to_try() -> None:
    assert ("/v1/jobs", "limit") in QUERY_PARAMETERS and ("/v1/videos", "limit") in QUERY_PARAMETERS
    assert ("/admin/", "page") in QUERY_PARAMETERS
    assert ("/v1/jobs", "application/json", "metadata") in BODY_FIELDS


@pytest.mark.parametrize(("path", "name"), QUERY_PARAMETERS)
@FUZZ
@given(value=hostile_text)
def test_a_query_parameter_never_answers_5xx(
    fuzz_app: Flask, fuzz_auth: dict[str, str], path: str, name: str, value: str
) -> None:
    url = path.replace("{video_id}", str(uuid.uuid4())).replace("{job_id}", str(uuid.uuid4()))

    response = fuzz_app.test_client().get(url, query_string={name: value}, headers=fuzz_auth)

    if path.startswith("/admin") and response.status_code == 200:
        return  # an HTML page
    _assert_no_server_error(response)


@pytest.mark.parametrize(("path", "media_type", "name"), BODY_FIELDS)
@FUZZ
@given(data=st.data())
def test_a_body_field_never_answers_5xx(
    fuzz_app: Flask, fuzz_auth: dict[str, str], path: str, media_type: str, name: str, data: st.DataObject
) -> None:
    client = fuzz_app.test_client()
    if media_type == "application/json":
        value = data.draw(hostile_json)
        fields = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in VALID_BODY.items() if k != name)
        body = "{" + fields + (", " if fields else "") + f"{json.dumps(name)}: {value}" + "}"
        response = client.post(path, data=body.encode(), content_type=media_type, headers=fuzz_auth)
    else:  # a form: text fields only
        form = {**VALID_BODY, name: data.draw(hostile_text)}
        response = client.post(path, data=form, content_type=media_type, headers=fuzz_auth)

    _assert_no_server_error(response)
