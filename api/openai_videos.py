"""OpenAI-compatible Videos API (`/v1/videos...`) mapped onto vidserve's own jobs.

OpenAI's field names, statuses and error shape, so the official `openai` SDK works unchanged: `seconds` becomes
the nearest frame count the model's family can make at its frame rate, `size` ("WxH") its width and height.
A video id is the job id: the same job shows in `/v1/jobs` and the admin dashboard.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request

from api import rate_limit
from api.auth import principal, requires
from api.errors import ApiError, InvalidField, TooManyJobs
from api.extension import check_extendable, parse_extension
from api.forms import FORM_MIMETYPES, Form, parse_form
from api.idempotency import claimed_record_id, idempotent
from api.query import integer_parameter
from api.services import services
from api.validation import (
    PROMPT_CONTROL_CHARACTERS,
    RANDOM_SEED_BOUND,
    JobSubmission,
    parse_json_object,
    read_body,
    recorded_params,
)
from engine.registry import ModelSpec
from engine.request import InvalidRequest
from vidserve.job_view import queue_to_dict
from vidserve.jobs import JobConflict, JobNotFound, JobQuotaExceeded, QueuePlace
from vidserve.schema import Job, JobStatus

bp = Blueprint("openai_videos", __name__, url_prefix="/v1/videos")

CREATE_FIELDS = ("prompt", "model", "seconds", "size", "input_reference")
EXTEND_FIELDS = ("prompt", "seconds", "video")
STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "failed",  # OpenAI has no canceled state; the error says what happened
}
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
SIZE_PATTERN = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


class OpenAIError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def _error_response(e: OpenAIError) -> tuple[Response, int]:
    return jsonify(error={"message": e.message, "type": e.kind, "param": e.param, "code": e.code}), e.status


@bp.errorhandler(OpenAIError)
def _openai_error(e: OpenAIError) -> tuple[Response, int]:
    return _error_response(e)


@bp.errorhandler(InvalidRequest)
def _invalid_request(e: InvalidRequest) -> tuple[Response, int]:
    return _error_response(OpenAIError(400, str(e), _public_param(e.field), "invalid_value"))


@bp.errorhandler(ApiError)
def _api_error(e: ApiError) -> tuple[Response, int, dict[str, str]]:
    return (*_error_response(OpenAIError(e.status, e.message, e.field, e.code)), e.headers)


@bp.errorhandler(JobQuotaExceeded)
def _quota_exceeded(e: JobQuotaExceeded) -> tuple[Response, int, dict[str, str]]:
    return _api_error(TooManyJobs(e.limit))


@bp.errorhandler(JobNotFound)
def _not_found(e: JobNotFound) -> tuple[Response, int]:
    return _error_response(OpenAIError(404, f"No video found with id '{e}'.", "video_id", "not_found"))


# ---- mapping -------------------------------------------------------------------------------------------


def frames_for_seconds(spec: ModelSpec, seconds: float, fps: int) -> int:
    """The frame count of the form `m*k + 1` nearest to `seconds * fps` (ties go to the longer clip)."""
    multiple = spec.rules.frame_multiple
    k = max(0, math.floor((seconds * fps - 1) / multiple + 0.5))
    return multiple * k + 1


def _public_param(field: str | None) -> str | None:
    # Our engine's field names, as the OpenAI request spells them.
    return {"num_frames": "seconds", "height": "size", "width": "size"}.get(field or "", field)


def _unix(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def video_object(job: Job, place: QueuePlace | None = None) -> dict[str, Any]:
    """A job as OpenAI's Video object, plus `queue`: a queued job's place (position, estimated start) or null."""
    params = job.params or {}
    fps = int(params.get("fps") or 8)
    error = None
    if job.status == JobStatus.FAILED:
        error = {"code": job.error_code or "failed", "message": job.error_message or "generation failed"}
    elif job.status == JobStatus.CANCELED:
        error = {"code": "canceled", "message": "the video was canceled before it finished"}
    return {
        "id": str(job.id),
        "object": "video",
        "model": job.model,
        "status": STATUS[job.status],
        "progress": int(round((job.progress or 0.0) * 100)),
        "created_at": _unix(job.created_at),
        "completed_at": _unix(job.finished_at),
        "expires_at": None,
        "prompt": params.get("prompt"),
        "seconds": f"{params.get('num_frames', 1) / fps:g}",
        "size": f"{params.get('width')}x{params.get('height')}",
        "remixed_from_video_id": None,
        "error": error,
        "queue": queue_to_dict(place),
    }


def _parse_form() -> Form:
    """The form body under the JSON body's UTF-8 rule (api/forms.py), its refusal in the OpenAI error shape."""
    try:
        return parse_form(request)
    except ApiError as e:
        raise OpenAIError(400, e.message, e.field, "invalid_value" if e.field else "invalid_body") from None


def _parse_create_body() -> dict[str, Any]:
    # The SDK sends multipart/form-data (for the optional input_reference file); curl users send JSON.
    if request.mimetype in FORM_MIMETYPES:
        form = _parse_form()
        body: dict[str, Any] = dict(form.fields)
        if form.files:
            body["input_reference"] = True
        return body
    try:
        return parse_json_object(read_body(request))
    except ApiError as e:
        raise OpenAIError(400, e.message, e.field, "invalid_json" if e.field is None else "invalid_value") from None


def _resolve_create(body: dict[str, Any]) -> tuple[uuid.UUID, str, dict[str, Any]]:
    svc = services()
    for name in body:
        if name not in CREATE_FIELDS:
            raise OpenAIError(400, f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    if body.get("input_reference") is not None:
        raise OpenAIError(
            400,
            "input_reference is not supported: vidserve generates from text only.",
            "input_reference",
            "unsupported_parameter",
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise OpenAIError(400, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if "\x00" in prompt:
        raise OpenAIError(400, "prompt must not contain NUL characters.", "prompt", "invalid_value")
    if re.search(f"[{PROMPT_CONTROL_CHARACTERS}]", prompt):
        raise OpenAIError(400, "prompt must not contain control characters.", "prompt", "invalid_value")
    names = svc.registry.names()
    model = body.get("model") or svc.registry.default
    if not isinstance(model, str) or model not in svc.registry:
        raise OpenAIError(400, f"Invalid model: {model!r}; available: {', '.join(names)}.", "model", "invalid_value")
    spec = svc.registry.get(model)
    fps = spec.defaults.fps
    requested: dict[str, Any] = {"prompt": prompt, "fps": fps, "seed": secrets.randbelow(RANDOM_SEED_BOUND)}

    seconds = body.get("seconds")
    if seconds is not None:
        requested["num_frames"] = _frames_for_seconds(spec, seconds, fps)

    size = body.get("size")
    if size is not None:
        match = SIZE_PATTERN.match(size) if isinstance(size, str) else None
        if not match:
            raise OpenAIError(
                400,
                f"Invalid size: {size!r}; must be WIDTHxHEIGHT, e.g. {spec.defaults.width}x{spec.defaults.height}.",
                "size",
                "invalid_value",
            )
        requested["width"], requested["height"] = int(match.group(1)), int(match.group(2))

    job_id = uuid.uuid4()
    resolved = spec.resolve(str(job_id), requested)  # InvalidRequest -> 400 naming seconds/size
    # Every generation field, resolved (a clip longer than the model's window records its long-video settings).
    return job_id, model, recorded_params(resolved)


def _frames_for_seconds(spec: ModelSpec, seconds: Any, fps: int) -> int:
    """The frame count a `seconds` value asks of `spec` at `fps`; 400 naming `seconds` when it is not a positive
    number or longer than the model makes (its long-video limit)."""
    try:
        value = float(seconds) if not isinstance(seconds, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise OpenAIError(
            400, f"Invalid seconds: {seconds!r}; must be a positive number of seconds.", "seconds", "invalid_value"
        )
    frames = frames_for_seconds(spec, value, fps)
    limit = spec.max_long_frames
    if frames > limit:
        longest = limit - (limit - 1) % spec.rules.frame_multiple
        raise OpenAIError(
            400,
            f"Invalid seconds: {seconds!r}; {spec.name} makes at most {longest / fps:g} seconds"
            f" ({longest} frames at {fps} fps).",
            "seconds",
            "invalid_value",
        )
    return frames


def _parse_extension_body() -> dict[str, Any]:
    """`prompt`, `seconds` and `video` ({"id": ...}) from the SDK's multipart form (`video[id]`) or JSON."""
    if request.mimetype in FORM_MIMETYPES:
        form = _parse_form()
        body: dict[str, Any] = {}
        for name, value in form.fields.items():
            if name == "video[id]":
                body["video"] = {"id": value}
            else:
                body[name] = value
        if form.files:
            body["video"] = None  # an uploaded file: refused below, only our own videos can be continued
            body["video_file"] = True
        return body
    try:
        return parse_json_object(read_body(request))
    except ApiError as e:
        raise OpenAIError(400, e.message, None, "invalid_json") from None


def _resolve_extension(body: dict[str, Any], owner: uuid.UUID | None) -> JobSubmission:
    svc = services()
    if body.pop("video_file", False):
        raise OpenAIError(
            400, "video must be {'id': ...} of a completed video; uploads cannot be extended.", "video", "invalid_value"
        )
    for name in body:
        if name not in EXTEND_FIELDS:
            raise OpenAIError(400, f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    for name in EXTEND_FIELDS:
        if body.get(name) is None:
            raise OpenAIError(400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    video = body["video"]
    if not isinstance(video, dict) or set(video) != {"id"} or not isinstance(video["id"], str):
        message = "video must be an object {'id': ...} naming a completed video."
        raise OpenAIError(400, message, "video", "invalid_value")
    try:
        source = svc.jobs.get(video["id"], owner=owner)
    except JobNotFound:
        raise OpenAIError(404, f"No video found with id '{video['id']}'.", "video", "not_found") from None
    try:
        check_extendable(source)
    except ApiError as e:
        raise OpenAIError(e.status, e.message, "video", e.code) from None
    spec = svc.registry.get(source.model)
    frames = _frames_for_seconds(spec, body["seconds"], int(source.params.get("fps") or spec.defaults.fps))
    try:
        return parse_extension({"prompt": body["prompt"], "num_frames": frames}, source, svc.registry)
    except InvalidField as e:
        raise OpenAIError(400, e.message, _public_param(e.field), "invalid_value") from None


# ---- views ---------------------------------------------------------------------------------------------


@bp.post("")
@requires("jobs:write")
@idempotent(rebuild=lambda job: jsonify(video_object(job)))
def create_video() -> Response:
    rate_limit.check_submission_rate()
    svc = services()
    caller = principal()
    job_id, model, params = _resolve_create(_parse_create_body())
    job = svc.jobs.create(
        job_id=job_id,
        model=model,
        params=params,
        api_key_id=caller.api_key_id,
        max_active_jobs=caller.job_limit(svc.settings.max_concurrent_jobs_per_key),
        idempotency_record_id=claimed_record_id(),
    )
    svc.publish(job)
    return jsonify(video_object(job))


@bp.post("/extensions", provide_automatic_options=False)
@requires("jobs:write")
@idempotent(rebuild=lambda job: jsonify(video_object(job)))
def extend_video() -> Response:
    """A new video continuing a completed one (`client.videos.extend(prompt, seconds, video={"id": ...})`)."""
    rate_limit.check_submission_rate()
    svc = services()
    caller = principal()
    submission = _resolve_extension(_parse_extension_body(), caller.job_owner)
    job = svc.jobs.create(
        job_id=submission.job_id,
        model=submission.model,
        params=submission.params,
        api_key_id=caller.api_key_id,
        max_active_jobs=caller.job_limit(svc.settings.max_concurrent_jobs_per_key),
        idempotency_record_id=claimed_record_id(),
    )
    svc.publish(job)
    return jsonify(video_object(job))


@bp.route("/extensions", methods=["OPTIONS"], provide_automatic_options=False)
@requires("jobs:write")
def extensions_options() -> Response:
    # The path also matches `/<video_id>`: Flask's own answer would advertise that rule's GET and DELETE too.
    return Response(status=200, headers={"Allow": "OPTIONS, POST"})


@bp.get("/<video_id>")
@requires("jobs:read")
def retrieve_video(video_id: str) -> Response:
    jobs = services().jobs
    job = jobs.get(video_id, owner=principal().job_owner)
    return jsonify(video_object(job, jobs.queue_place(job)))


@bp.get("")
@requires("jobs:read")
def list_videos() -> Response:
    svc = services()
    owner = principal().job_owner
    try:
        limit = integer_parameter(request.args, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    except InvalidField as e:
        raise OpenAIError(400, f"{e.message}.", e.field, "invalid_value") from None
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise OpenAIError(400, "order must be 'asc' or 'desc'.", "order", "invalid_value")
    cursor = None
    after = request.args.get("after")
    if after:
        try:
            anchor = svc.jobs.get(after, owner=owner)
        except JobNotFound:
            raise OpenAIError(400, f"after: no video with id {after!r}.", "after", "invalid_value") from None
        cursor = (anchor.created_at, anchor.id)
    rows = svc.jobs.list(limit=limit + 1, after=cursor, order=order, owner=owner)
    page = rows[:limit]
    places = svc.jobs.queue_places(page)  # one query for the page's queued videos
    data = [video_object(job, places.get(job.id)) for job in page]
    return jsonify(
        object="list",
        data=data,
        first_id=data[0]["id"] if data else None,
        last_id=data[-1]["id"] if data else None,
        has_more=len(rows) > limit,
    )


@bp.get("/<video_id>/content")
@requires("jobs:read")
def video_content(video_id: str) -> Response:
    svc = services()
    variant = request.args.get("variant", "video")
    if variant != "video":
        raise OpenAIError(400, f"variant {variant!r} is not available; only 'video' is.", "variant", "invalid_value")
    job = svc.jobs.get(video_id, owner=principal().job_owner)
    if job.status != JobStatus.SUCCEEDED or not job.output:
        raise OpenAIError(
            409, f"Video is {STATUS[job.status]}; its content exists once it is completed.", None, "video_not_ready"
        )
    if svc.videos is None:
        raise OpenAIError(503, "no object store is configured", None, "storage_unavailable", "server_error")
    # The API never streams video bytes itself: the SDK follows the redirect to the presigned URL.
    url, _ = svc.videos.presigned_url(job.output["key"])
    return redirect(url, 302)


@bp.delete("/<video_id>")
@requires("jobs:write")
def delete_video(video_id: str) -> Response:
    svc = services()
    job = svc.jobs.get(video_id, owner=principal().job_owner)
    if not job.status.terminal:
        try:
            svc.jobs.cancel(video_id)  # a running worker stops at its next step (its lease is gone after delete)
        except JobConflict:
            pass  # it finished meanwhile
    deleted = svc.jobs.delete(video_id)
    if deleted.output and svc.videos is not None:
        svc.videos.delete(deleted.output["key"])
        if deleted.output.get("latents_key"):  # kept for extensions; same lifetime as the MP4
            svc.videos.delete(deleted.output["latents_key"])
    return jsonify(id=str(deleted.id), object="video.deleted", deleted=True)


# ---- OpenAPI fragment (merged into /openapi.json by api.openapi) ----------------------------------------

_OAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}
_VIDEO_ID = {"name": "video_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _oai_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _OAI_ERROR}}}


def _oai_json(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


OPENAPI_SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "OpenAIVideoCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "pattern": f"^[^{PROMPT_CONTROL_CHARACTERS}]*$"},
            "model": {"type": "string", "description": "a registered model (default: the first in /v1/models)"},
            "seconds": {
                "type": "string",
                "description": "clip length; becomes the nearest frame count the model's family makes at its fps, "
                "up to its long-video limit (max_long_frames in /v1/models, at least 20 s)",
            },
            "size": {"type": "string", "pattern": SIZE_PATTERN.pattern, "description": "WIDTHxHEIGHT"},
        },
    },
    "OpenAIVideoExtension": {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt", "seconds", "video"],
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "pattern": f"^[^{PROMPT_CONTROL_CHARACTERS}]*$"},
            "seconds": {
                "type": "string",
                "description": "length of the new part; the nearest frame count the model makes at the source's fps",
            },
            "video": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id"],
                "properties": {"id": {"type": "string", "description": "a completed video of this API key"}},
            },
        },
    },
    "OpenAIVideoExtensionForm": {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt", "seconds", "video[id]"],
        "description": "the `openai` SDK's form: the video reference as the field `video[id]`",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "pattern": f"^[^{PROMPT_CONTROL_CHARACTERS}]*$"},
            "seconds": {"type": "string"},
            "video[id]": {"type": "string"},
        },
    },
    "OpenAIVideo": {
        "type": "object",
        "required": ["id", "object", "model", "status", "progress", "created_at", "seconds", "size"],
        "properties": {
            "id": {"type": "string", "description": "the job id"},
            "object": {"const": "video"},
            "model": {"type": "string"},
            "status": {"type": "string", "enum": ["queued", "in_progress", "completed", "failed"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "created_at": {"type": "integer"},
            "completed_at": {"type": ["integer", "null"]},
            "expires_at": {"type": ["integer", "null"]},
            "prompt": {"type": ["string", "null"]},
            "seconds": {"type": "string"},
            "size": {"type": "string"},
            "remixed_from_video_id": {"type": "null"},
            "error": {
                "type": ["object", "null"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "queue": {
                "type": ["object", "null"],
                "description": "vidserve's addition, on retrieve and in lists: a queued video's place (position: "
                "queued jobs before it; estimated_start_at: ISO time or null); null otherwise",
                "properties": {
                    "position": {"type": "integer", "minimum": 0},
                    "estimated_start_at": {"type": ["string", "null"], "format": "date-time"},
                },
            },
        },
    },
    "OpenAIVideoList": {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/OpenAIVideo"}},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
    },
    "OpenAIVideoDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {"id": {"type": "string"}, "object": {"const": "video.deleted"}, "deleted": {"const": True}},
    },
}

_CREATE_BODY = {"schema": {"$ref": "#/components/schemas/OpenAIVideoCreate"}}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/videos": {
        "post": {
            "operationId": "openaiCreateVideo",
            "summary": "OpenAI-compatible: create a video (a job)",
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": _CREATE_BODY, "application/json": _CREATE_BODY},
            },
            "responses": {
                "200": {**_oai_json("the video, queued", "OpenAIVideo"), "headers": rate_limit.OPENAPI_HEADERS},
                "400": _oai_error("a parameter is invalid; `param` names it"),
                "429": {**_oai_error(rate_limit.RATE_LIMITED_DESCRIPTION), "headers": rate_limit.OPENAPI_429_HEADERS},
            },
        },
        "get": {
            "operationId": "openaiListVideos",
            "summary": "OpenAI-compatible: list videos",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "after", "in": "query", "schema": {"type": "string"}},
                {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
            ],
            "responses": {
                "200": _oai_json("one page of videos", "OpenAIVideoList"),
                "400": _oai_error("a parameter is invalid"),
            },
        },
    },
    "/v1/videos/extensions": {
        "post": {
            "operationId": "openaiExtendVideo",
            "summary": "OpenAI-compatible: continue a completed video (a new job from its final latents)",
            "description": "The new video holds the continuation only, at the source's model, size and fps.",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/OpenAIVideoExtensionForm"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/OpenAIVideoExtension"}},
                },
            },
            "responses": {
                "200": {**_oai_json("the new video, queued", "OpenAIVideo"), "headers": rate_limit.OPENAPI_HEADERS},
                "400": _oai_error("a parameter is invalid; `param` names it"),
                "404": _oai_error("no such video (or another API key's)"),
                "409": _oai_error("the video is not completed, or kept no latents to continue from"),
                "429": {**_oai_error(rate_limit.RATE_LIMITED_DESCRIPTION), "headers": rate_limit.OPENAPI_429_HEADERS},
            },
        },
    },
    "/v1/videos/{video_id}": {
        "get": {
            "operationId": "openaiRetrieveVideo",
            "summary": "OpenAI-compatible: get a video",
            "parameters": [_VIDEO_ID],
            "responses": {"200": _oai_json("the video", "OpenAIVideo"), "404": _oai_error("no such video")},
        },
        "delete": {
            "operationId": "openaiDeleteVideo",
            "summary": "OpenAI-compatible: delete a video (cancels it when unfinished, removes job and MP4)",
            "parameters": [_VIDEO_ID],
            "responses": {"200": _oai_json("deleted", "OpenAIVideoDeleted"), "404": _oai_error("no such video")},
        },
    },
    "/v1/videos/{video_id}/content": {
        "get": {
            "operationId": "openaiDownloadVideoContent",
            "summary": "OpenAI-compatible: download the MP4 (a redirect to its presigned URL)",
            "parameters": [
                _VIDEO_ID,
                {"name": "variant", "in": "query", "schema": {"type": "string", "enum": ["video"]}},
            ],
            "responses": {
                "302": {"description": "redirect to a presigned URL of the MP4"},
                "400": _oai_error("a variant other than video"),
                "404": _oai_error("no such video"),
                "409": _oai_error("the video is not completed"),
            },
        }
    },
}
