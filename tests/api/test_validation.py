"""Bad input to POST /v1/jobs: each rule answers 400/413/422 with a JSON error naming the field and rule.

Nothing is stored or published for a refused request.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

FOX = "a red fox running through snow"

# (test id, fields merged into a valid body, field named in the error, words the rule contains)
BAD_FIELDS: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown model", {"model": "no-such-model"}, "model", "must be one of: tiny-wan, tiny-ltx"),
    ("model not a string", {"model": 7}, "model", "must be a string"),
    ("unknown field", {"colour": "red"}, "colour", "unknown field"),
    ("prompt missing", {"prompt": None}, "prompt", "is required"),
    ("prompt not a string", {"prompt": ["a", "b"]}, "prompt", "must be a string"),
    ("prompt blank", {"prompt": "   "}, "prompt", "must not be blank"),
    ("prompt over the model's length", {"prompt": "x" * 201}, "prompt", "at most 200 characters"),
    ("prompt with a NUL character", {"prompt": "fox\u0000"}, "prompt", "NUL"),
    ("prompt with a lone surrogate", {"prompt": "fox\ud800"}, "prompt", "valid Unicode"),
    ("negative prompt not a string", {"negative_prompt": 3}, "negative_prompt", "must be a string"),
    ("negative prompt over the length", {"negative_prompt": "x" * 201}, "negative_prompt", "at most 200"),
    ("num_frames not an integer", {"num_frames": 9.5}, "num_frames", "must be an integer"),
    ("num_frames a string", {"num_frames": "9"}, "num_frames", "must be an integer"),
    ("num_frames a boolean", {"num_frames": True}, "num_frames", "must be an integer"),
    ("num_frames zero", {"num_frames": 0}, "num_frames", "between 1 and 161"),
    # tiny-wan's window is 33 frames; longer videos are made from windows up to its long-video limit.
    ("num_frames over the model's limit", {"num_frames": 165}, "num_frames", "between 1 and 161"),
    ("num_frames the family cannot make", {"num_frames": 10}, "num_frames", "4k+1"),
    ("ltx num_frames the family cannot make", {"model": "tiny-ltx", "num_frames": 13}, "num_frames", "8k+1"),
    ("height not an integer", {"height": "32"}, "height", "must be an integer"),
    ("height over the model's limit", {"height": 256}, "height", "between 1 and 128"),
    ("height the family cannot make", {"height": 40}, "height", "multiple of 16"),
    ("ltx width the family cannot make", {"model": "tiny-ltx", "width": 48}, "width", "multiple of 32"),
    ("width negative", {"width": -32}, "width", "between 1 and 128"),
    ("steps not an integer", {"num_inference_steps": 4.2}, "num_inference_steps", "must be an integer"),
    ("steps zero", {"num_inference_steps": 0}, "num_inference_steps", "between 1 and 50"),
    ("steps over the model's limit", {"num_inference_steps": 51}, "num_inference_steps", "between 1 and 50"),
    ("guidance not a number", {"guidance_scale": "high"}, "guidance_scale", "must be a number"),
    ("guidance negative", {"guidance_scale": -1}, "guidance_scale", "between 0.0 and 20.0"),
    ("guidance too large", {"guidance_scale": 20.5}, "guidance_scale", "between 0.0 and 20.0"),
    ("guidance beyond any float", {"guidance_scale": 10**400}, "guidance_scale", "finite number"),
    ("seed negative", {"seed": -1}, "seed", "between 0 and"),
    ("seed beyond 63 bits", {"seed": 2**63}, "seed", "between 0 and"),
    ("seed not an integer", {"seed": "42"}, "seed", "must be an integer"),
    ("fps zero", {"fps": 0}, "fps", "between 1 and 60"),
    ("fps too high", {"fps": 61}, "fps", "between 1 and 60"),
    ("webhook url not a string", {"webhook_url": 5}, "webhook_url", "must be a string"),
    ("webhook url not http", {"webhook_url": "ftp://example.com/hook"}, "webhook_url", "http(s) URL"),
    ("webhook url relative", {"webhook_url": "/hook"}, "webhook_url", "http(s) URL"),
    ("webhook url without host", {"webhook_url": "http:///hook"}, "webhook_url", "http(s) URL"),
    ("webhook url with spaces", {"webhook_url": "http://exa mple.com/"}, "webhook_url", "http(s) URL"),
    ("webhook url with a bad port", {"webhook_url": "http://example.com:99999/"}, "webhook_url", "port between 1"),
    ("webhook url too long", {"webhook_url": "https://example.com/" + "a" * 2100}, "webhook_url", "at most 2048"),
    ("metadata not an object", {"metadata": ["a"]}, "metadata", "must be a JSON object"),
    ("metadata too large", {"metadata": {"blob": "x" * 5000}}, "metadata", "at most 4096 bytes"),
    ("metadata with a NUL character", {"metadata": {"k": "v\u0000"}}, "metadata", "NUL"),
    ("cache not an object", {"cache": "fast"}, "cache", "must be a JSON object"),
    ("cache with an unknown policy", {"cache": {"policy": "magic"}}, "cache.policy", "must be one of: none"),
    ("cache threshold out of range", {"cache": {"policy": "first_block", "threshold": 5}}, "cache.threshold", "1.0"),
]


@pytest.mark.parametrize(("fields", "field", "rule"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS])
def test_a_bad_field_is_refused_with_422_naming_the_field_and_rule(
    client: FlaskClient, count_jobs, fields: dict[str, Any], field: str, rule: str
) -> None:
    jobs_before = count_jobs()
    body = {"model": "tiny-wan", "prompt": FOX, **fields}
    body = {k: v for k, v in body.items() if not (k in ("model", "prompt") and v is None)}

    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_field"
    assert error["field"] == field
    assert rule in error["rule"]
    assert field in error["message"]
    # Publishing follows storing, so nothing stored means nothing published either.
    assert count_jobs() == jobs_before


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"[1, 2]", b'"a string"', b"42", b'{"model": "tiny-wan", "prompt": NaN}', b'{"a": 1'],
    ids=["text", "empty", "array", "string", "number", "NaN", "truncated"],
)
def test_a_body_that_is_not_a_json_object_is_refused_with_400(client: FlaskClient, body: bytes) -> None:
    response = client.post("/v1/jobs", data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_body"


def test_a_body_over_max_body_bytes_is_refused_with_413(client: FlaskClient, api_settings) -> None:
    body = b'{"model": "tiny-wan", "prompt": "' + b"x" * api_settings.max_body_bytes + b'"}'

    response = client.post("/v1/jobs", data=body, content_type="application/json")

    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "body_too_large"
