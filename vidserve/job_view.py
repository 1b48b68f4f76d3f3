"""The public JSON shape of a job, shared by the REST API and webhook payloads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from vidserve.jobs import PRIORITY_NAMES, QueuePlace
from vidserve.schema import Job, JobStatus

Presign = Callable[[str], tuple[str, dt.datetime]]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def queue_to_dict(place: QueuePlace | None) -> dict[str, Any] | None:
    """A queued job's place: how many queued jobs run before it and when it may start (null: not yet known)."""
    if place is None:
        return None
    return {"position": place.position, "estimated_start_at": _iso(place.estimated_start_at)}


def job_to_dict(job: Job, presign: Presign | None, place: QueuePlace | None = None) -> dict[str, Any]:
    output = None
    if job.status == JobStatus.SUCCEEDED and job.output:
        url, expires_at = presign(job.output["key"]) if presign else (None, None)
        output = {
            "url": url,
            "expires_at": _iso(expires_at),
            **{k: job.output.get(k) for k in ("content_type", "bytes", "num_frames", "width", "height", "fps")},
        }
    return {
        "id": str(job.id),
        "status": job.status.value,
        "model": job.model,
        "params": job.params,
        "progress": round(job.progress or 0.0, 4),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "output": output,
        "stats": job.stats,
        "webhook_url": job.webhook_url,
        "webhook_events": job.webhook_events,
        "metadata": job.client_metadata,
        "priority": PRIORITY_NAMES.get(job.priority, "normal"),
        "queue": queue_to_dict(place),
    }
