"""The jobs surface of the REST API: submit, read, list, cancel, extend and download (`/v1/jobs...`).

Views parse the request, call the job store and render `job_to_dict`; rules live in validation and the store.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, request, url_for

from api.auth import principal, requires
from api.errors import Forbidden, JobNotSucceeded, StorageUnavailable
from api.extension import check_extendable, parse_extension
from api.idempotency import claimed_record_id, idempotent
from api.rate_limit import check_submission_rate
from api.services import services
from api.validation import (
    JobSubmission,
    encode_cursor,
    parse_job_query,
    parse_json_object,
    parse_submission,
    read_body,
)
from api.webhooks import check_webhook_target
from vidserve.jobs import PRIORITIES
from vidserve.keys import PRIORITY_SCOPE
from vidserve.schema import Job, JobStatus

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def _accepted(job: Job) -> tuple[Response, int, dict[str, str]]:
    """The submit's response: 202 with the job and its Location."""
    return jsonify(services().view_job(job)), 202, {"Location": url_for("jobs.get_job", job_id=job.id)}


def _accept(submission: JobSubmission) -> tuple[Response, int, dict[str, str]]:
    """Store a checked submission (a new job or an extension) for the caller and publish its wake-up."""
    svc = services()
    caller = principal()
    if submission.webhook_url is not None:
        check_webhook_target(submission.webhook_url)
    if submission.priority == "high" and not caller.allows(PRIORITY_SCOPE):
        raise Forbidden(PRIORITY_SCOPE, field="priority")
    job = svc.jobs.create(
        api_key_id=caller.api_key_id,
        max_active_jobs=caller.job_limit(svc.settings.max_concurrent_jobs_per_key),
        job_id=submission.job_id,
        model=submission.model,
        params=submission.params,
        webhook_url=submission.webhook_url,
        metadata=submission.metadata,
        webhook_events=submission.webhook_events,
        idempotency_record_id=claimed_record_id(),
        priority=PRIORITIES[submission.priority],
    )
    svc.publish(job)
    return _accepted(job)


@bp.post("")
@requires("jobs:write")
@idempotent(rebuild=_accepted)
def submit_job() -> tuple[Response, int, dict[str, str]]:
    check_submission_rate()
    return _accept(parse_submission(parse_json_object(read_body(request)), services().registry))


@bp.post("/<job_id>/extend")
@requires("jobs:write")
@idempotent(rebuild=_accepted)
def extend_job(job_id: str) -> tuple[Response, int, dict[str, str]]:
    """A new job continuing a finished one of the caller's from its kept final latents."""
    check_submission_rate()
    svc = services()
    source = svc.jobs.get(job_id, owner=principal().job_owner)  # another key's job: 404, as if it did not exist
    body = parse_json_object(read_body(request))
    check_extendable(source)
    return _accept(parse_extension(body, source, svc.registry))


@bp.get("")
@requires("jobs:read")
def list_jobs() -> Response:
    svc = services()
    query = parse_job_query(request.args)
    # One extra row tells whether another page exists, so the last page never links to an empty one.
    rows = svc.jobs.list(
        status=query.status,
        model=query.model,
        limit=query.limit + 1,
        after=query.before,
        owner=principal().job_owner,
    )
    page = rows[: query.limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > query.limit else None
    return jsonify(data=svc.view_jobs(page), next_cursor=next_cursor)


@bp.get("/<job_id>")
@requires("jobs:read")
def get_job(job_id: str) -> Response:
    svc = services()
    return jsonify(svc.view_job(svc.jobs.get(job_id, owner=principal().job_owner)))


@bp.post("/<job_id>/cancel")
@requires("jobs:write")
def cancel_job(job_id: str) -> tuple[Response, int]:
    svc = services()
    svc.jobs.get(job_id, owner=principal().job_owner)  # another key's job: 404, as if it did not exist
    return jsonify(svc.view_job(svc.jobs.cancel(job_id))), 202


@bp.get("/<job_id>/content")
@requires("jobs:read")
def job_content(job_id: str) -> Response:
    svc = services()
    job = svc.jobs.get(job_id, owner=principal().job_owner)
    if job.status != JobStatus.SUCCEEDED or not job.output:
        raise JobNotSucceeded(f"job is {job.status.value}; its video exists once it has succeeded")
    if svc.videos is None:
        raise StorageUnavailable("no object store is configured")
    url, _expires_at = svc.videos.presigned_url(job.output["key"])
    return redirect(url, 302)
