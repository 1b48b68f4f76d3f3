"""One nesting rule for JSON bodies, checked at validation: a field nests at most MAX_JSON_DEPTH levels, so what
validation accepts, storage (psycopg's JSON encoding, Postgres JSONB) accepts too. Deeper is a 4xx naming the
field (or a 400 for a body too deep to parse at all), never a 500, never a stored job.
"""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient

from api.validation import MAX_JSON_DEPTH

FOX = "a red fox running through snow"


def _lists(depth: int) -> object:
    """A value nesting `depth` levels: [[...[1]...]]."""
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def _metadata(depth: int) -> dict[str, object]:
    """A metadata object nesting `depth` levels in all (the object itself is the first)."""
    return {"a": _lists(depth - 1)}


def _body(depth: int) -> bytes:
    """The body with metadata nesting `depth` levels, written out (json.dumps itself recurses per level)."""
    lists = "[" * (depth - 1) + "1" + "]" * (depth - 1)
    return f'{{"model": "tiny-wan", "prompt": "{FOX}", "metadata": {{"a": {lists}}}}}'.encode()


@pytest.fixture
def no_new_jobs(count_jobs):
    before = count_jobs()
    yield
    assert count_jobs() == before, "a refused request stored a job"


def test_metadata_at_the_nesting_limit_is_stored_and_read_back(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data=_body(MAX_JSON_DEPTH), content_type="application/json")

    assert response.status_code == 202, response.get_json()
    stored = client.get(f"/v1/jobs/{response.get_json()['id']}").get_json()
    assert stored["metadata"] == _metadata(MAX_JSON_DEPTH)


# 965 is what the parser accepted and the insert then failed on (issue 16); just past the limit must fail too.
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100, 965, 5000])
@pytest.mark.parametrize("idempotency", [False, True], ids=["plain", "with-idempotency-key"])
def test_metadata_nested_past_the_limit_is_a_422_naming_it(
    client: FlaskClient, no_new_jobs, depth: int, idempotency: bool
) -> None:
    headers = {"Idempotency-Key": str(uuid.uuid4())} if idempotency else {}
    response = client.post("/v1/jobs", data=_body(depth), content_type="application/json", headers=headers)

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == "metadata"
    assert str(MAX_JSON_DEPTH) in error["rule"]


@pytest.mark.parametrize("field", ["cache", "webhook_events"])
def test_every_structured_field_has_the_same_nesting_rule(client: FlaskClient, no_new_jobs, field: str) -> None:
    value = _metadata(200) if field == "cache" else [_lists(200)]
    body = {"model": "tiny-wan", "prompt": FOX, "webhook_url": "https://example.com/h", field: value}

    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == field


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 965])
def test_the_openai_create_names_the_field_nested_too_deep(client: FlaskClient, no_new_jobs, depth: int) -> None:
    body = f'{{"prompt": "{FOX}", "size": {"[" * depth}1{"]" * depth}}}'.encode()

    response = client.post("/v1/videos", data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "size"
