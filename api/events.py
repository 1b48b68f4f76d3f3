"""`GET /v1/jobs/{id}/events`: a job's status and progress as Server-Sent Events until it is terminal.

The stream polls the job row (Postgres is the source of truth; workers write progress a few times a second)
and sends an event only when something changed, plus a comment line now and then so proxies keep it open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, stream_with_context

from api.auth import principal, requires
from api.services import Services, services
from vidserve.job_view import queue_to_dict

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0
# A stream ends after this long even if the job is still running; EventSource clients reconnect by themselves.
MAX_STREAM_SECONDS = 3600.0


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def job_events(svc: Services, job_id: str, poll: float = POLL_SECONDS) -> Iterator[str]:
    """`status` events ({id, status, progress, error, queue}) on every change, a queued job's place included; a
    final `done` event with the whole job."""
    job = svc.jobs.get(job_id)  # raises JobNotFound before the stream starts: a plain 404
    last: tuple[str, float, int | None] | None = None
    sent = 0
    started = last_write = time.monotonic()
    yield "retry: 1000\n\n"
    while True:
        place = svc.jobs.queue_place(job)
        state = (job.status.value, round(job.progress or 0.0, 4), place.position if place else None)
        if state != last:
            sent += 1
            error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
            data = {"id": str(job.id), "status": state[0], "progress": state[1], "error": error}
            yield sse("status", {**data, "queue": queue_to_dict(place)}, sent)
            last, last_write = state, time.monotonic()
        if job.status.terminal:
            yield sse("done", svc.view_job(job), sent + 1)
            return
        now = time.monotonic()
        if now - started > MAX_STREAM_SECONDS:
            return
        if now - last_write > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_write = now
        time.sleep(poll)
        job = svc.jobs.get(job_id)


@bp.get("/<job_id>/events")
@requires("jobs:read")
def stream_job_events(job_id: str) -> Response:
    svc = services()
    svc.jobs.get(job_id, owner=principal().job_owner)  # another key's job: 404, as if it did not exist
    events = job_events(svc, job_id)
    first = next(events)  # evaluated here so an unknown job answers 404 JSON, not a broken stream
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def body() -> Iterator[str]:
        yield first
        yield from events

    return Response(stream_with_context(body()), mimetype="text/event-stream", headers=headers)


# The OpenAPI fragment of this blueprint (merged into /openapi.json by api.openapi).
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/jobs/{job_id}/events": {
        "get": {
            "operationId": "streamJobEvents",
            "summary": "Follow a job's status and progress as Server-Sent Events",
            "description": "`status` events ({id, status, progress, error, queue}) on every change (a queued job's "
            "`queue` place included), then one `done` event "
            "with the whole job once it is terminal; the stream then ends. Comment lines keep idle streams open.",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "the event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "404": {
                    "description": "no such job",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
    }
}
