"""One UTF-8 rule for every body encoding: a form body (`/v1/videos` takes urlencoded and multipart, as the
OpenAI SDK sends) with bytes that are not UTF-8 is a 400 naming the field, as the same bytes in JSON are;
never a job made from U+FFFD replacement characters.
"""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient

BOUNDARY = "vidserve-test-boundary"
URLENCODED = "application/x-www-form-urlencoded"


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    body = b""
    for name, value in parts:
        body += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def no_new_jobs(count_jobs):
    before = count_jobs()
    yield
    assert count_jobs() == before, "a refused request stored a job"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"prompt=%FF%FE+a+fox&size=32x32", "application/x-www-form-urlencoded"),
        (b"prompt=\xff\xfe a fox&size=32x32", "application/x-www-form-urlencoded"),
        (b"prompt=a+fox%ED%A0%80", "application/x-www-form-urlencoded"),  # an encoded lone surrogate
        (_multipart(("prompt", b"\xff\xfe a fox")), f"multipart/form-data; boundary={BOUNDARY}"),
        (b'{"prompt": "\xff\xfe a fox"}', "application/json"),
    ],
    ids=["urlencoded-escaped", "urlencoded-raw", "urlencoded-surrogate", "multipart", "json"],
)
def test_a_body_with_bytes_that_are_not_utf8_is_a_400(
    client: FlaskClient, no_new_jobs, body: bytes, content_type: str
) -> None:
    response = client.post("/v1/videos", data=body, content_type=content_type)

    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["param"] in ("prompt", None)  # JSON that does not decode has no fields to name
    if content_type != "application/json":
        assert error["param"] == "prompt"


def test_a_form_field_name_that_is_not_utf8_is_a_400(client: FlaskClient, no_new_jobs) -> None:
    response = client.post("/v1/videos", data=b"prompt=fox&%FF=1", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 400


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data"])
def test_utf8_form_fields_make_the_same_video_as_json(client: FlaskClient, content_type: str) -> None:
    prompt = "ein Fuchs läuft durch den Schnee, 雪の中の狐"
    if content_type == "multipart/form-data":
        body = _multipart(("prompt", prompt.encode()), ("size", b"48x32"))
        content_type = f"{content_type}; boundary={BOUNDARY}"
    else:
        body = "prompt=" + prompt.replace(" ", "+") + "&size=48x32"
        body = body.encode()

    response = client.post("/v1/videos", data=body, content_type=content_type)

    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["prompt"], response.get_json()["size"]) == (prompt, "48x32")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"prompt=%FF%FE+then+left&seconds=1&video%5Bid%5D=" + str(uuid.uuid4()).encode(), URLENCODED),
        (
            _multipart(("prompt", b"\xff\xfe then left"), ("seconds", b"1"), ("video[id]", str(uuid.uuid4()).encode())),
            f"multipart/form-data; boundary={BOUNDARY}",
        ),
    ],
    ids=["urlencoded", "multipart"],
)
def test_the_extension_form_is_held_to_the_same_utf8_rule(
    client: FlaskClient, no_new_jobs, body: bytes, content_type: str
) -> None:
    # The extension's form was read with werkzeug's lenient decoding: U+FFFD in the prompt, then a 404 for the
    # unknown video, where the create refused the same bytes with a 400.
    response = client.post("/v1/videos/extensions", data=body, content_type=content_type)

    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["param"] == "prompt"
