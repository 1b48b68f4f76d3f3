"""Request parsing for the REST API: the body's shape and types, query filters and paging cursors.

Shape rules live here; model-specific rules (frames, sizes, steps, prompt length) are `ModelSpec.resolve`'s.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from api.errors import InvalidField, MalformedBody
from api.query import integer_parameter
from engine.registry import ModelRegistry
from engine.request import GenerationRequest
from vidserve.jobs import ALL_WEBHOOK_EVENTS, PRIORITIES
from vidserve.schema import JobStatus
from vidserve.webhook_urls import UnsafeWebhookURL, check_shape

# field -> JSON type it must have; `None` is accepted for every optional field and means "not given".
JOB_FIELDS: dict[str, str] = {
    "model": "string",
    "prompt": "string",
    "negative_prompt": "string",
    "num_frames": "integer",
    "height": "integer",
    "width": "integer",
    "num_inference_steps": "integer",
    "guidance_scale": "number",
    "seed": "integer",
    "fps": "integer",
    "cache": "object",
    "long_video": "object",
    "segments": "array",
    "webhook_url": "string",
    "webhook_events": "array",
    "metadata": "object",
    "priority": "string",
}
REQUIRED_FIELDS = ("prompt",)
GENERATION_FIELDS = (
    "prompt",
    "negative_prompt",
    "num_frames",
    "height",
    "width",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "fps",
    "cache",
    "long_video",
    "segments",
)
MAX_WEBHOOK_URL_CHARS = 2048
# http(s), a host name, IPv4 address or bracketed IPv6 address, an optional port 1-65535, then printable
# ASCII: one regex that both the validator and the OpenAPI document use, so they cannot disagree. Where the
# host resolves to is checked at submit too (api/webhooks.py), and again before every delivery.
WEBHOOK_URL_PATTERN = (
    r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
    r"([/?#][\x21-\x7e]*)?$"
)
# Control characters a prompt may not hold (C0 but tab and line breaks, DEL, C1): invisible, and some confuse
# tokenizers and logs. One character class that both the validator and the OpenAPI document use.
PROMPT_CONTROL_CHARACTERS = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f"
# µs since the epoch (16 digits reach the year 2286) and the job id's hex.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[0-9a-f]{32}$"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_METADATA_BYTES = 4096
# Arrays and objects a field may nest. Parsing, storing (psycopg's JSON encoding) and every later read recurse
# once per level; this bound sits so far below Python's recursion limit that no call stack can reach it, so
# what validation accepts, storage accepts. Real metadata and cache settings nest two or three levels.
MAX_JSON_DEPTH = 32
# The tokens that decide nesting: strings (whose brackets do not count) and the structural characters.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')
# Random seeds stay below 2**53 so that JavaScript clients read them back exactly.
RANDOM_SEED_BOUND = 2**32
DEFAULT_PAGE = 20
MAX_PAGE = 100

_RULE_FOR_TYPE = {
    "string": "must be a string",
    "integer": "must be an integer",
    "number": "must be a number",
    "object": "must be a JSON object",
    "array": "must be a JSON array",
}


@dataclass(frozen=True)
class JobSubmission:
    """A checked `POST /v1/jobs` body: the job's id, its resolved parameters and the client's extras."""

    job_id: uuid.UUID
    model: str
    params: dict[str, Any]
    webhook_url: str | None
    metadata: dict[str, Any] | None
    webhook_events: list[str] | None = None
    priority: str = "normal"


@dataclass(frozen=True)
class JobQuery:
    status: str | None
    model: str | None
    limit: int
    before: tuple[dt.datetime, uuid.UUID] | None


def read_body(request: Request) -> bytes:
    """The raw body, refusing (413) one longer than the app's MAX_CONTENT_LENGTH."""
    data = request.get_data(cache=False)
    limit = request.max_content_length
    # Without a Content-Length (chunked), werkzeug stops reading at the limit and returns the truncated body
    # silently; a body that fills the limit may have been cut, so it is refused rather than parsed.
    if limit is not None and request.content_length is None and len(data) >= limit:
        raise RequestEntityTooLarge()
    return data


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object whose fields nest at most MAX_JSON_DEPTH levels; 400 or a 422 naming the field."""
    check_nesting(raw)
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise MalformedBody("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise MalformedBody("the body must be a JSON object")
    return body


def check_nesting(raw: bytes) -> None:
    """Refuse a body with a field nested deeper than MAX_JSON_DEPTH (422 naming it) before it is parsed.

    Checked on the raw text because the parser recurses per level: past a depth that depends on how deep the
    call stack already is, parsing fails on its own, so only a check before it gives every depth one answer.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH + 1:
        return  # too few brackets to nest that deep: the common case costs two counts
    depth, field, previous = 0, None, b","
    for token in _JSON_TOKEN.findall(raw):
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH + 1:  # the body object itself is the first level
                if field is None:
                    raise MalformedBody("the body must be a JSON object")
                raise InvalidField(field, f"must not nest deeper than {MAX_JSON_DEPTH} levels")
        elif token in (b"]", b"}"):
            depth -= 1
        elif depth == 1 and previous in (b"{", b","):  # a key of the body object
            try:
                field = json.loads(token)
            except ValueError:
                raise MalformedBody("the body must be a JSON object") from None
        previous = token


def json_depth(value: Any) -> int:
    """How many arrays and objects deep `value` nests (a scalar: 0), counted without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_submission(body: dict[str, Any], registry: ModelRegistry, context: Any = None) -> JobSubmission:
    """Check the body's shape and types, then let the model's spec apply its own rules and defaults.

    `context`: set for an extension (any stand-in for the latents the worker loads), so that the long-video
    settings are resolved, and recorded, as the continuation they will run as.
    """
    for name in body:
        if name not in JOB_FIELDS:
            raise InvalidField(name, "unknown field")
    for name in REQUIRED_FIELDS:
        if body.get(name) is None:
            raise InvalidField(name, "is required")
    values = {name: _typed(name, value) for name, value in body.items() if value is not None}
    values.setdefault("model", registry.default)
    for name in ("model", "prompt", "negative_prompt"):
        if name in values:
            _check_text(name, values[name])
    for name in ("prompt", "negative_prompt"):
        if name in values:
            check_prompt_characters(name, values[name])
    if not values["prompt"].strip():
        raise InvalidField("prompt", "must not be blank")
    if values["model"] not in registry:
        raise InvalidField("model", f"must be one of: {', '.join(registry.names())}")
    webhook_url = values.get("webhook_url")
    if webhook_url is not None:
        _check_webhook_url(webhook_url)
    metadata = values.get("metadata")
    if metadata is not None:
        _check_metadata(metadata)
    webhook_events = values.get("webhook_events")
    if webhook_events is not None:
        _check_webhook_events(webhook_events, webhook_url)
    priority = values.get("priority", "normal")
    if priority not in PRIORITIES:
        raise InvalidField("priority", f"must be one of: {', '.join(PRIORITIES)}")
    if "long_video" in values:
        values["long_video"] = {name: _whole(value) for name, value in values["long_video"].items()}
    if "segments" in values:
        _check_segment_prompts(values["segments"])
        values["segments"] = [_whole_from_frame(segment) for segment in values["segments"]]

    job_id = uuid.uuid4()
    requested = {name: values[name] for name in GENERATION_FIELDS if name in values}
    # A job is reproducible: the seed it runs with is always recorded, chosen here when the client gave none.
    requested.setdefault("seed", secrets.randbelow(RANDOM_SEED_BOUND))
    resolved = registry.get(values["model"]).resolve(str(job_id), requested, context=context)
    return JobSubmission(
        job_id, values["model"], recorded_params(resolved), webhook_url, metadata, webhook_events, priority
    )


def recorded_params(resolved: GenerationRequest) -> dict[str, Any]:
    """A resolved request as the job's params (JSON), which `ModelSpec.resolve` reads back to the same request.

    `cache`, `long_video` and `segments` appear only when set, so an ordinary job's params stay as they were
    before those fields existed.
    """
    params = {name: getattr(resolved, name) for name in GENERATION_FIELDS}
    if params["cache"] is None:
        del params["cache"]
    if resolved.long_video is None:
        del params["long_video"]
    else:
        params["long_video"] = resolved.long_video.as_dict()
    if not resolved.segments:
        del params["segments"]
    else:
        params["segments"] = [{"from_frame": start, "prompt": prompt} for start, prompt in resolved.segments]
    return params


def parse_job_query(args: Mapping[str, str]) -> JobQuery:
    """`status`, `model`, `limit` and `cursor` of `GET /v1/jobs`; a bad (or empty) value is a 422 naming it."""
    status = args.get("status")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise InvalidField("status", f"must be one of: {', '.join(s.value for s in JobStatus)}")
    model = args.get("model")
    if model is not None:
        if not 1 <= len(model) <= 200:
            raise InvalidField("model", "must be 1 to 200 characters")
        _check_text("model", model)
    limit = integer_parameter(args, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    cursor = args.get("cursor")
    return JobQuery(status, model, limit, decode_cursor(cursor) if cursor is not None else None)


def encode_cursor(created_at: dt.datetime, job_id: uuid.UUID) -> str:
    """An opaque page cursor: the last job's creation time (µs since the epoch) and id."""
    micros = (created_at - EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros}.{job_id.hex}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    # Every string the pattern admits decodes, so the OpenAPI document can state exactly what is valid.
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise InvalidField("cursor", "must be a next_cursor value returned by this endpoint")
    micros, job_hex = cursor.split(".")
    return EPOCH + dt.timedelta(microseconds=int(micros)), uuid.UUID(hex=job_hex)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _typed(name: str, value: Any) -> Any:
    kind = JOB_FIELDS[name]
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "object" and isinstance(value, dict):
        return value
    if kind == "array" and isinstance(value, list):
        return value
    if kind in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind == "number":
            # An integer too large for a float (10**400) would overflow later, in the range check.
            if isinstance(value, int) and abs(value) > 2**1023:
                raise InvalidField(name, "must be a finite number")
            return value
        # JSON has one number type: 9.0 is the integer 9 (as JSON Schema's "integer" says).
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
    raise InvalidField(name, _RULE_FOR_TYPE[kind])


def _check_text(name: str, value: str) -> None:
    # Postgres stores neither NUL characters nor lone surrogates: refuse them here, not with a 500 later.
    if "\x00" in value:
        raise InvalidField(name, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidField(name, "must be valid Unicode (no lone surrogates)") from None


def check_prompt_characters(name: str, value: str) -> None:
    if re.search(f"[{PROMPT_CONTROL_CHARACTERS}]", value):
        raise InvalidField(name, "must not contain control characters (tab and line breaks are fine)")


def _check_webhook_url(url: str) -> None:
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise InvalidField("webhook_url", f"must be at most {MAX_WEBHOOK_URL_CHARS} characters")
    try:
        check_shape(url)
    except UnsafeWebhookURL as exc:
        raise InvalidField("webhook_url", str(exc)) from None
    if not re.fullmatch(WEBHOOK_URL_PATTERN, url):
        raise InvalidField("webhook_url", "must be an absolute http(s) URL with a host name")


def _check_webhook_events(events: list[Any], webhook_url: str | None) -> None:
    """`webhook_events`: distinct event types to send (e.g. the opt-in "job.progress"); needs a webhook_url."""
    allowed = sorted(ALL_WEBHOOK_EVENTS)
    if any(not isinstance(e, str) or e not in ALL_WEBHOOK_EVENTS for e in events):
        raise InvalidField("webhook_events", f"must be a list of: {', '.join(allowed)}")
    if len(set(events)) != len(events):
        raise InvalidField("webhook_events", "must not repeat an event")
    if webhook_url is None:
        raise InvalidField("webhook_events", "needs a webhook_url")


def _whole(value: Any) -> Any:
    # JSON has one number type: 8.0 is the integer 8 inside objects too (as for the top-level fields).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole_from_frame(segment: Any) -> Any:
    if isinstance(segment, dict) and "from_frame" in segment:
        return {**segment, "from_frame": _whole(segment["from_frame"])}
    return segment


def _check_segment_prompts(segments: list[Any]) -> None:
    # The shape and ranges are the spec's (`parse_segments`); the text rules every stored prompt obeys are ours.
    for i, segment in enumerate(segments):
        prompt = segment.get("prompt") if isinstance(segment, dict) else None
        if isinstance(prompt, str):
            _check_text(f"segments[{i}].prompt", prompt)
            check_prompt_characters(f"segments[{i}].prompt", prompt)


def _check_metadata(metadata: dict[str, Any]) -> None:
    try:
        _check_json_text(metadata)
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise InvalidField("metadata", "must be a JSON object of valid Unicode text without NUL characters") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidField("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")


def _check_json_text(value: Any) -> None:
    """Raise ValueError when any key or string inside `value` holds a NUL character (Postgres JSONB refuses it)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json_text(key)
            _check_json_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_json_text(item)
