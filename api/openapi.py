"""The OpenAPI 3.1 document of the REST API, served at `/openapi.json`.

Built from the model registry, the family registry (`engine.families`) and the validation constants, so its
enums and bounds match what is enforced.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from api import auth, events, metrics, openai_videos, rate_limit
from api.admin import views as admin_views
from api.extension import INHERITED_FIELDS
from api.services import services
from api.validation import (
    CURSOR_PATTERN,
    MAX_METADATA_BYTES,
    MAX_PAGE,
    MAX_WEBHOOK_URL_CHARS,
    PROMPT_CONTROL_CHARACTERS,
    WEBHOOK_URL_PATTERN,
)
from engine.cache_policy import SETTINGS
from engine.families import FAMILIES
from engine.long_video_settings import MAX_SEGMENTS
from engine.registry import ModelRegistry, ModelSpec
from engine.request import CONTINUATION, LONG_VIDEO_METHODS
from vidserve.jobs import ALL_WEBHOOK_EVENTS, PRIORITIES
from vidserve.schema import DeliveryStatus, JobStatus

bp = Blueprint("openapi", __name__)

API_VERSION = "0.1.0"
# Not blank, and no control characters but tab and line breaks (what validation.check_prompt_characters checks).
PROMPT_PATTERN = f"^[^{PROMPT_CONTROL_CHARACTERS}]*[^\\s{PROMPT_CONTROL_CHARACTERS}][^{PROMPT_CONTROL_CHARACTERS}]*$"
OPENAPI_CACHE_KEY = "vidserve.openapi"


@bp.get("/openapi.json")
def openapi_json() -> Response:
    # The document depends only on the registry, which is fixed for the life of the app.
    doc = current_app.extensions.get(OPENAPI_CACHE_KEY)
    if doc is None:
        doc = build_openapi(services().registry)
        document_access(doc, current_app)
        current_app.extensions[OPENAPI_CACHE_KEY] = doc
    return jsonify(doc)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    nullable = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}
    if headers:
        response["headers"] = headers
    return response


def _job_request_schema(spec: ModelSpec, default: bool = False) -> dict[str, Any]:
    """The body `spec` accepts: its own limits, frame rule and size multiple, so every valid body is a 202."""
    lim, rules = spec.limits, spec.rules
    size = rules.size_multiple
    frames = list(range(1, spec.max_long_frames + 1, rules.frame_multiple))
    no_nul = "^[^\\u0000]*$"
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt"] if default else ["model", "prompt"],
        "properties": {
            # The default model's body may leave `model` out or send null (as for every optional field).
            "model": (
                {"type": ["string", "null"], "enum": [spec.name, None], "description": "the default model"}
                if default
                else {"type": "string", "const": spec.name}
            ),
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": lim.max_prompt_chars,
                "pattern": PROMPT_PATTERN,
                "description": "what the video shows; not blank, no control characters but tab and line breaks",
            },
            "negative_prompt": _nullable(
                {
                    "type": "string",
                    "maxLength": lim.max_prompt_chars,
                    "pattern": f"^[^{PROMPT_CONTROL_CHARACTERS}]*$",
                    "description": "what to avoid",
                }
            ),
            "num_frames": _nullable(
                {
                    "type": "integer",
                    "enum": frames,
                    "description": f"{rules.frame_multiple}k+1 frames; beyond the native window of "
                    f"{spec.window_frames} the video is made from native pieces (see long_video)",
                }
            ),
            "height": _nullable({"type": "integer", "minimum": size, "maximum": lim.max_height, "multipleOf": size}),
            "width": _nullable({"type": "integer", "minimum": size, "maximum": lim.max_width, "multipleOf": size}),
            "num_inference_steps": _nullable(
                {"type": "integer", "minimum": 1, "maximum": lim.max_steps, "description": "denoising steps"}
            ),
            "guidance_scale": _nullable(
                {"type": "number", "minimum": 0, "maximum": lim.max_guidance_scale, "description": "guidance scale"}
            ),
            "seed": _nullable(
                {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 2**63 - 1,
                    "description": "random when absent; the seed used is recorded in the job's params",
                }
            ),
            "fps": _nullable({"type": "integer", "minimum": 1, "maximum": 60, "description": "frames per second"}),
            "cache": {"anyOf": [_ref("CachePolicy"), {"type": "null"}]},
            "long_video": {"anyOf": [_long_video_schema(spec), {"type": "null"}]},
            "segments": _nullable(_segments_schema(spec)),
            "webhook_url": _nullable(
                {
                    "type": "string",
                    "maxLength": MAX_WEBHOOK_URL_CHARS,
                    "pattern": WEBHOOK_URL_PATTERN,
                    "description": "receives a signed event (Standard Webhooks) at every status change; its host "
                    "must resolve to public addresses only, and the URL carries no credentials",
                }
            ),
            "metadata": _nullable(
                {
                    "type": "object",
                    "propertyNames": {"pattern": no_nul},
                    "additionalProperties": _ref("MetadataValue"),
                    "description": f"any JSON object of at most {MAX_METADATA_BYTES} bytes, without NUL characters",
                }
            ),
            "webhook_events": _nullable(
                {
                    "type": "array",
                    "items": {"type": "string", "enum": sorted(ALL_WEBHOOK_EVENTS)},
                    "uniqueItems": True,
                    "description": "the events sent to webhook_url (default: every status change); add "
                    "`job.progress` for an event each time progress crosses a tenth",
                }
            ),
            "priority": _nullable(
                {
                    "type": "string",
                    "enum": list(PRIORITIES),
                    "description": "the queue runs higher priorities first, then shares fairly across API keys "
                    "(default normal); when every slot is busy, a waiting job takes over the slot of a running job "
                    "of a lower priority at its next checkpoint (README: Preemption); `high` needs a key with the "
                    "`jobs:priority` scope (else 403)",
                }
            ),
        },
        # Events are sent to the webhook URL, so asking for events needs one.
        "if": {"properties": {"webhook_events": {"type": "array"}}, "required": ["webhook_events"]},
        "then": {"properties": {"webhook_url": {"type": "string"}}, "required": ["webhook_url"]},
    }


def _job_extension_schema(registry: ModelRegistry) -> dict[str, Any]:
    """`POST /v1/jobs/{id}/extend`: a submit's fields but those the source fixes (model, size, frame rate). The
    ranges that apply are the source model's; stated here are those of the model with the longest videos."""
    widest = max(registry, key=lambda spec: spec.max_long_frames, default=None)
    if widest is None:
        return {"type": "object"}
    submit = _job_request_schema(widest)
    properties = {k: v for k, v in submit["properties"].items() if k not in INHERITED_FIELDS}
    properties["num_frames"] = _nullable(
        {
            "type": "integer",
            "minimum": 1,
            "maximum": widest.max_long_frames,
            "description": "the new frames: the source model's frame rule and long-video limit apply",
        }
    )
    properties["long_video"] = {"anyOf": [_long_video_schema(widest, CONTINUATION), {"type": "null"}]}
    properties["include_original"] = _nullable(
        {"type": "boolean", "description": "the new video starts with the source's frames (default false)"}
    )
    return {**submit, "required": ["prompt"], "properties": properties}


def _long_video_schema(spec: ModelSpec, method: str | None = None) -> dict[str, Any]:
    """`long_video` for `spec`: the ranges `engine.long_video_settings.parse_long_video` checks; `method` fixes
    the method (an extension is always a continuation)."""
    default, multiple = spec.long_video, spec.rules.frame_multiple
    largest = spec.window_frames - 1 - multiple
    frames = {"type": "integer", "minimum": multiple, "maximum": largest, "multipleOf": multiple}
    methods = [method] if method else list(LONG_VIDEO_METHODS)
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "description": "how a video longer than the model's native window is made (settings left out take the "
        f"model's defaults, {default.as_dict()}): windows (overlapping native windows denoised together, moving "
        "each step) or continuation (native chunks in turn, each from the previous chunk's clean tail latents)",
        "properties": {
            "method": {"type": "string", "enum": methods},
            "overlap": {**frames, "description": "windows: frames shared by neighbouring windows"},
            "context_frames": {**frames, "description": "continuation: frames of the previous chunk each starts from"},
            "color_match": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "continuation: pull each chunk's colour statistics towards the first chunk's (0: off)",
            },
        },
    }
    # Colour matching is the continuation's: a positive value needs that method, named unless it is the default.
    schema["if"] = {"properties": {"color_match": {"exclusiveMinimum": 0}}, "required": ["color_match"]}
    schema["then"] = {
        "properties": {"method": {"const": CONTINUATION}},
        "required": [] if default.method == CONTINUATION else ["method"],
    }
    return schema


def _segments_schema(spec: ModelSpec) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_SEGMENTS,
        "description": "prompts that take over from a frame on (the story changes); `from_frame` strictly ascending "
        "and below num_frames; `prompt` holds before the first",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["prompt", "from_frame"],
            "properties": {
                "prompt": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": spec.limits.max_prompt_chars,
                    "pattern": PROMPT_PATTERN,
                },
                "from_frame": {"type": "integer", "minimum": 0, "maximum": spec.max_long_frames - 1},
            },
        },
    }


def _cache_policy_schema() -> dict[str, Any]:
    """Approximate step caching, one schema per policy, from the engine's own table of ranges and defaults."""
    variants = []
    for policy, settings in SETTINGS.items():
        properties: dict[str, Any] = {"policy": {"const": policy}}
        for name, (kind, low, high, default) in settings.items():
            properties[name] = {
                "type": ["integer" if kind is int else "number", "null"],  # null: the default
                "minimum": kind(low),
                "maximum": kind(high),
                "default": kind(default),
            }
        variants.append(
            {"type": "object", "additionalProperties": False, "required": ["policy"], "properties": properties}
        )
    return {
        "description": (
            "approximate step caching for this job (exact reuse is always on): none; first_block (skip the other "
            "transformer blocks while the first block's residual changed less than `threshold`); taylorseer "
            "(compute every `interval`-th step after `warmup`, forecast the others to `order`)"
        ),
        "oneOf": variants,
    }


def request_schema_name(model: str) -> str:
    # Component names allow only [A-Za-z0-9._-]; registry names may hold more (e.g. "org/model").
    return "JobRequest." + re.sub(r"[^A-Za-z0-9._-]", "_", model)


def _schemas(registry: ModelRegistry) -> dict[str, Any]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "stable machine-readable name of the error"},
                        "message": {"type": "string"},
                        "field": {"type": "string", "description": "the request field at fault"},
                        "rule": {"type": "string", "description": "what that field must satisfy"},
                    },
                }
            },
        },
        "JobRequest": {
            "description": "one body shape per model: each model's own limits, frame rule and size multiple",
            "oneOf": [_ref(request_schema_name(spec.name)) for spec in registry],
        },
        **{
            request_schema_name(spec.name): _job_request_schema(spec, spec.name == registry.default)
            for spec in registry
        },
        "CachePolicy": _cache_policy_schema(),
        "JobExtension": _job_extension_schema(registry),
        "MetadataValue": {
            "anyOf": [
                {"type": ["null", "boolean", "number"]},
                {"type": "string", "pattern": "^[^\\u0000]*$"},
                {"type": "array", "items": _ref("MetadataValue")},
                {
                    "type": "object",
                    "propertyNames": {"pattern": "^[^\\u0000]*$"},
                    "additionalProperties": _ref("MetadataValue"),
                },
            ]
        },
        "JobParams": {
            "type": "object",
            "description": "the resolved generation parameters (defaults applied), exactly what the engine runs",
            "properties": {
                "prompt": {"type": "string"},
                "negative_prompt": {"type": "string"},
                "num_frames": {"type": "integer"},
                "height": {"type": "integer"},
                "width": {"type": "integer"},
                "num_inference_steps": {"type": "integer"},
                "guidance_scale": {"type": "number"},
                "seed": {"type": "integer"},
                "fps": {"type": "integer"},
            },
            # `cache` appears only in the params of a job that asked for approximate caching (resolved, defaults
            # applied), `long_video` and `segments` only in a long one's, `extends` only in an extension's: none is
            # among the properties every job has.
            "patternProperties": {
                "^cache$": _ref("CachePolicy"),
                "^long_video$": {
                    "type": "object",
                    "required": ["method", "overlap", "context_frames", "color_match"],
                    "description": "the long-video settings the job runs with, defaults applied",
                },
                "^segments$": {
                    "type": "array",
                    "items": {"type": "object", "required": ["from_frame", "prompt"]},
                },
                "^extends$": {
                    "type": "object",
                    "required": ["job_id", "include_original"],
                    "description": "the job this one continues, and whether its video comes first",
                    "properties": {"job_id": {"type": "string"}, "include_original": {"type": "boolean"}},
                },
            },
        },
        "JobOutput": {
            "type": "object",
            "required": ["url", "expires_at", "content_type", "bytes", "num_frames", "width", "height", "fps"],
            "properties": {
                "url": {"type": ["string", "null"], "description": "presigned GET URL of the MP4"},
                "expires_at": nullable_time,
                "content_type": {"type": ["string", "null"]},
                "bytes": {"type": ["integer", "null"]},
                "num_frames": {"type": ["integer", "null"]},
                "width": {"type": ["integer", "null"]},
                "height": {"type": ["integer", "null"]},
                "fps": {"type": ["integer", "number", "null"]},
            },
        },
        "Job": {
            "type": "object",
            "required": [
                "id",
                "status",
                "model",
                "params",
                "progress",
                "created_at",
                "started_at",
                "finished_at",
                "attempts",
                "error",
                "output",
                "stats",
                "webhook_url",
                "webhook_events",
                "metadata",
                "priority",
                "queue",
            ],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": [s.value for s in JobStatus]},
                "model": {"type": "string"},
                "params": _ref("JobParams"),
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": nullable_time,
                "finished_at": nullable_time,
                "attempts": {"type": "integer", "minimum": 0},
                "error": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": ["string", "null"]}},
                        },
                    ]
                },
                "output": {"oneOf": [{"type": "null"}, _ref("JobOutput")]},
                "stats": {
                    "type": ["object", "null"],
                    "description": "engine statistics of the successful attempt: timings, `cache` (step caching), "
                    "`resumed_from_step` (0: ran from the start), `checkpoints_written`, `checkpoints_failed`",
                },
                "webhook_url": {"type": ["string", "null"]},
                "webhook_events": {"type": ["array", "null"], "items": {"type": "string"}},
                "metadata": {"type": ["object", "null"]},
                "priority": {"type": "string", "enum": list(PRIORITIES)},
                "queue": {
                    "description": "while queued: how many queued jobs run before this one, and when it may start "
                    "(from the model's starts in the last 10 minutes; null until there are some); null otherwise",
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["position", "estimated_start_at"],
                            "properties": {
                                "position": {"type": "integer", "minimum": 0},
                                "estimated_start_at": nullable_time,
                            },
                        },
                    ],
                },
            },
        },
        "JobList": {
            "type": "object",
            "required": ["data", "next_cursor"],
            "properties": {
                "data": {"type": "array", "items": _ref("Job")},
                "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
            },
        },
        "WebhookDelivery": {
            "type": "object",
            "description": "one webhook event for the job's webhook_url, with every attempt to deliver it",
            "required": [
                "id",
                "event_type",
                "url",
                "status",
                "created_at",
                "delivered_at",
                "next_attempt_at",
                "last_status_code",
                "last_error",
                "attempts",
            ],
            "properties": {
                "id": {"type": "string", "description": "also the `webhook-id` header of every attempt"},
                "event_type": {"type": "string"},
                "url": {"type": "string"},
                "status": {"type": "string", "enum": [s.value for s in DeliveryStatus]},
                "created_at": {"type": "string", "format": "date-time"},
                "delivered_at": {"type": ["string", "null"], "format": "date-time"},
                "next_attempt_at": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "when the next attempt is due (pending deliveries only)",
                },
                "last_status_code": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
                "attempts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["attempt", "at", "status_code", "error"],
                        "properties": {
                            "attempt": {"type": "integer"},
                            "at": {"type": "string", "format": "date-time"},
                            "status_code": {"type": ["integer", "null"], "description": "null: no HTTP answer"},
                            "error": {"type": ["string", "null"], "description": "null: delivered (2xx)"},
                        },
                    },
                },
            },
        },
        "WebhookDeliveryList": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": _ref("WebhookDelivery")}},
        },
        "Model": {
            "type": "object",
            "required": ["name", "family", "limits", "defaults", "default", "long_video"],
            "properties": {
                "name": {"type": "string"},
                "default": {"type": "boolean", "description": "the model of a job that names none"},
                "family": {"type": "string", "enum": list(FAMILIES)},
                "limits": {
                    "type": "object",
                    "properties": {
                        "max_frames": {"type": "integer", "description": "the native window (as window_frames)"},
                        "window_frames": {"type": "integer", "description": "frames one transformer forward makes"},
                        "max_long_frames": {
                            "type": "integer",
                            "description": "the longest video, made from native windows or chunks (long_video)",
                        },
                        "max_height": {"type": "integer"},
                        "max_width": {"type": "integer"},
                        "max_steps": {"type": "integer"},
                        "max_prompt_chars": {"type": "integer"},
                        "max_guidance_scale": {"type": "number"},
                        "frame_rule": {"type": "string", "description": "allowed frame counts, e.g. 4k+1"},
                        "size_multiple": {"type": "integer", "description": "height and width are multiples of it"},
                    },
                },
                "defaults": {
                    "type": "object",
                    "properties": {
                        "num_frames": {"type": "integer"},
                        "height": {"type": "integer"},
                        "width": {"type": "integer"},
                        "num_inference_steps": {"type": "integer"},
                        "guidance_scale": {"type": "number"},
                        "fps": {"type": "integer"},
                    },
                },
                "long_video": {
                    "type": "object",
                    "description": "the settings a long request gets for those it leaves out",
                    "properties": {
                        "method": {"type": "string", "enum": list(LONG_VIDEO_METHODS)},
                        "overlap": {"type": "integer"},
                        "context_frames": {"type": "integer"},
                        "color_match": {"type": "number"},
                    },
                },
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": _ref("Model")}},
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Readiness": {
            "type": "object",
            "required": ["status", "failed", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "unavailable"]},
                "failed": {"type": "array", "items": {"type": "string", "enum": ["postgres", "redis", "s3"]}},
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok"],
                        "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}},
                    },
                },
            },
        },
    }


def build_openapi(registry: ModelRegistry) -> dict[str, Any]:
    """The whole document for an app serving `registry`."""
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "a job id (UUID); any other value is an unknown job (404)",
    }
    db_down = _error("the job database is not reachable")
    not_found = _error("no such job")
    # Links let clients (and stateful fuzzers) follow a submitted job's id to the operations that take it.
    job_links = {
        name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
        for name, operation in (
            ("GetJob", "getJob"),
            ("CancelJob", "cancelJob"),
            ("GetJobContent", "getJobContent"),
            ("ListJobWebhooks", "listJobWebhooks"),
            ("ExtendJob", "extendJob"),
        )
    }
    location = {"Location": {"description": "where to find it", "schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vidserve",
            "version": API_VERSION,
            "description": "Text-to-video generation jobs. Every error answers the Error schema.",
        },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a generation job",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("JobRequest")}},
                    },
                    "responses": {
                        "202": {
                            **_json("the job, queued", "Job", {**location, **rate_limit.OPENAPI_HEADERS}),
                            "links": job_links,
                        },
                        "400": _error("the body is not a JSON object"),
                        "413": _error("the body is larger than VIDSERVE_MAX_BODY_BYTES"),
                        "422": _error("a field breaks a rule; `field` and `rule` say which and what"),
                        "429": {
                            **_error(rate_limit.RATE_LIMITED_DESCRIPTION),
                            "headers": rate_limit.OPENAPI_429_HEADERS,
                        },
                        "503": db_down,
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "List jobs, newest first",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                        },
                        {
                            "name": "model",
                            "in": "query",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\u0000]*$"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                            "description": "the next_cursor of the previous page (opaque)",
                        },
                    ],
                    "responses": {
                        "200": _json("one page of jobs", "JobList"),
                        "422": _error("a filter value is invalid"),
                        "503": db_down,
                    },
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "Get a job",
                    "parameters": [job_id],
                    "responses": {"200": _json("the job", "Job"), "404": not_found, "503": db_down},
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job",
                    "description": "A queued job is canceled at once; a running one stops at its next denoising step.",
                    "parameters": [job_id],
                    "responses": {
                        "202": _json("the job, canceled or flagged for cancellation", "Job"),
                        "404": not_found,
                        "409": _error("the job has already finished"),
                        "503": db_down,
                    },
                }
            },
            "/v1/jobs/{job_id}/extend": {
                "post": {
                    "operationId": "extendJob",
                    "summary": "Continue a finished video: a new job that starts from its final latents",
                    "description": "The new job has the source's model, size and frame rate (and, unless given, its "
                    "steps, guidance and negative prompt); its video holds the new frames only, or the original's "
                    "first with `include_original`. Another API key's job is 404.",
                    "parameters": [job_id],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("JobExtension")}},
                    },
                    "responses": {
                        "202": {
                            **_json("the new job, queued", "Job", {**location, **rate_limit.OPENAPI_HEADERS}),
                            "links": job_links,
                        },
                        "400": _error("the body is not a JSON object"),
                        "404": not_found,
                        "409": _error(
                            "the job has not succeeded (`job_not_succeeded`), or kept no latents to continue from "
                            "(`latents_unavailable`)"
                        ),
                        "413": _error("the body is larger than VIDSERVE_MAX_BODY_BYTES"),
                        "422": _error("a field breaks a rule; `field` and `rule` say which and what"),
                        "429": {
                            **_error(rate_limit.RATE_LIMITED_DESCRIPTION),
                            "headers": rate_limit.OPENAPI_429_HEADERS,
                        },
                        "503": db_down,
                    },
                }
            },
            "/v1/jobs/{job_id}/content": {
                "get": {
                    "operationId": "getJobContent",
                    "summary": "Download the job's MP4",
                    "parameters": [job_id],
                    "responses": {
                        "302": {
                            "description": "redirect to a presigned URL of the MP4",
                            "headers": {"Location": {"description": "the presigned URL", "schema": {"type": "string"}}},
                        },
                        "404": not_found,
                        "409": _error("the job has not succeeded"),
                        "503": _error("the job database or the object store is not reachable"),
                    },
                }
            },
            "/v1/jobs/{job_id}/webhooks": {
                "get": {
                    "operationId": "listJobWebhooks",
                    "summary": "The job's webhook deliveries with every attempt",
                    "parameters": [job_id],
                    "responses": {
                        "200": _json("every delivery, oldest first", "WebhookDeliveryList"),
                        "404": not_found,
                        "503": db_down,
                    },
                }
            },
            "/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver": {
                "post": {
                    "operationId": "redeliverJobWebhook",
                    "summary": "Send a delivered or failed webhook again",
                    "description": "The same body under the same `webhook-id`, with a fresh attempt budget, now.",
                    "parameters": [
                        job_id,
                        {"name": "delivery_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "202": _json("the delivery, pending again", "WebhookDelivery"),
                        "404": _error("no such job, or the job has no such delivery"),
                        "409": _error("the delivery is still pending, or its webhook URL is disabled (410 Gone)"),
                        "503": db_down,
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The models this service serves",
                    "responses": {"200": _json("every registered model", "ModelList")},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers",
                    "responses": {"200": _json("alive", "Health")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: Postgres, Redis and S3 answer",
                    "responses": {
                        "200": _json("every dependency answers", "Readiness"),
                        "503": _json("`failed` names the dependencies that do not answer", "Readiness"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "the OpenAPI 3.1 document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            # The operator and client surfaces document themselves beside their code.
            **events.OPENAPI_PATHS,
            **metrics.OPENAPI_PATHS,
            **openai_videos.OPENAPI_PATHS,
            **admin_views.OPENAPI_PATHS,
        },
        "components": {"schemas": {**_schemas(registry), **openai_videos.OPENAPI_SCHEMAS}},
    }


# ---- who may call what: API keys, scopes, quotas and Idempotency-Key, read from the views' own marks ----

SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key (`vs_...`) from `vidserve keys create`; its scopes are listed per operation "
        "(an `admin` key has them all). Not needed when the server runs with VIDSERVE_AUTH=off.",
    }
}
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "makes a retried submit safe: the same key with the same body answers the first response "
    "again (with `Idempotent-Replayed: true`) instead of making another job; kept per API key for "
    "VIDSERVE_IDEMPOTENCY_TTL_SECONDS",
}
REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response of an earlier request with the same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def document_access(doc: dict[str, Any], app: Flask) -> None:
    """Add each keyed operation's security (bearer key and scope) and answers (401, 403; for submits the
    Idempotency-Key header with 400/409/422 and the concurrent-job quota's 429) to `doc`, from the views' marks."""
    doc["components"]["securitySchemes"] = SECURITY_SCHEMES
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        scope = auth.required_scope(view, rule.rule)
        if scope is None:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        # The OpenAI-compatible surface answers errors in OpenAI's shape.
        error = "OpenAIError" if path.startswith("/v1/videos") else "Error"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = doc["paths"][path][method.lower()]
            operation["security"] = [{"apiKey": [scope]}]
            responses = operation["responses"]
            responses["401"] = {
                **_error_of(error, "no API key, or an unknown or revoked one (`unauthorized`)"),
                "headers": {"WWW-Authenticate": {"description": "the Bearer challenge", "schema": {"type": "string"}}},
            }
            responses["403"] = _error_of(error, f"the API key lacks the {scope} scope (`insufficient_scope`)")
            if getattr(view, "idempotent", False):
                _document_submit(operation, error)


def _error_of(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _also(responses: dict[str, Any], status: str, schema: str, description: str) -> None:
    # Another cause of an answer some other part already documents joins its description.
    if status in responses:
        responses[status]["description"] += f"; or {description}"
    else:
        responses[status] = _error_of(schema, description)


def _document_submit(operation: dict[str, Any], error: str) -> None:
    operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY_PARAMETER)
    responses = operation["responses"]
    for status, response in responses.items():
        if status.startswith("2"):
            response["headers"] = {**response.get("headers", {}), **REPLAYED_HEADER}
    _also(responses, "400", error, "the Idempotency-Key is empty or longer than 255 characters")
    _also(responses, "409", error, "a request with this Idempotency-Key is still being processed (retry)")
    _also(responses, "422", error, "the Idempotency-Key was used with a different request")
    _also(
        responses,
        "429",
        error,
        "the API key has as many queued and running jobs as its quota allows (`too_many_concurrent_jobs`)",
    )
    retry_after = {"description": "seconds until a retry may succeed", "schema": {"type": "integer", "minimum": 1}}
    responses["429"]["headers"] = {"Retry-After": retry_after, **responses["429"].get("headers", {})}
