"""Named errors of the REST API and the one place that maps every error to an HTTP response.

Every error answers `{"error": {"code", "message", "field"?, "rule"?}}`, including Flask's own 404/405/413.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from engine.request import InvalidRequest, ModelUnavailable
from vidserve.jobs import JobConflict, JobNotFound, JobQuotaExceeded

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers on purpose; subclasses fix the status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.rule = rule
        self.headers: dict[str, str] = {}


class MalformedBody(ApiError):
    """The body is not a JSON object."""

    status = 400
    code = "malformed_body"


class InvalidField(ApiError):
    """A field (body or query) breaks a rule; `field` and `rule` say which and what."""

    status = 422
    code = "invalid_field"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}", field=field, rule=rule)


class JobNotSucceeded(ApiError):
    """The job's video does not exist (yet)."""

    status = 409
    code = "job_not_succeeded"


class LatentsUnavailable(ApiError):
    """The job's video exists but its final latents were not kept, so it cannot be extended."""

    status = 409
    code = "latents_unavailable"


class RateLimited(ApiError):
    """The client sent more job submissions than its per-minute limit; `Retry-After` says when to retry."""

    status = 429
    code = "rate_limited"


class DeliveryNotFound(ApiError):
    """The job has no webhook delivery with that id."""

    status = 404
    code = "delivery_not_found"


class DeliveryConflict(ApiError):
    """The delivery cannot be sent again now: it is still pending, or its URL is disabled."""

    status = 409
    code = "delivery_conflict"


class StorageUnavailable(ApiError):
    """No object store is configured, so no video URL can be made."""

    status = 503
    code = "storage_unavailable"


class Unauthorized(ApiError):
    """No API key, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, invalid_token: bool = False) -> None:
        super().__init__(message)
        # RFC 6750: a request without credentials gets the bare challenge, a bad token names the error.
        challenge = 'Bearer realm="vidserve"' + (', error="invalid_token"' if invalid_token else "")
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(ApiError):
    """The API key lacks the scope the endpoint needs."""

    status = 403
    code = "insufficient_scope"

    def __init__(self, scope: str, field: str | None = None) -> None:
        """`field`: the body field whose value needs the scope (e.g. `priority: high`), when it is not the route."""
        super().__init__(f"this API key lacks the {scope} scope", field=field, rule=f"needs scope {scope}")
        self.headers = {"WWW-Authenticate": f'Bearer realm="vidserve", error="insufficient_scope", scope="{scope}"'}


class TooManyJobs(ApiError):
    """The API key has as many unfinished jobs as it may have."""

    status = 429
    code = "too_many_concurrent_jobs"
    # Jobs take seconds to minutes; a client polling this often learns soon enough that a slot is free.
    RETRY_AFTER_SECONDS = 5

    def __init__(self, limit: int) -> None:
        super().__init__(f"this API key already has {limit} queued or running jobs, its limit; retry once one ends")
        self.headers = {"Retry-After": str(self.RETRY_AFTER_SECONDS)}


class InvalidIdempotencyKey(ApiError):
    status = 400
    code = "invalid_idempotency_key"


class IdempotencyKeyInUse(ApiError):
    """The first request with this Idempotency-Key is still being processed."""

    status = 409
    code = "idempotency_key_in_use"


class IdempotencyKeyReused(ApiError):
    """The Idempotency-Key was used before with a different request."""

    status = 422
    code = "idempotency_key_reused"


# Flask/werkzeug's own errors get stable snake_case codes instead of their reason phrases.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int, code: str, message: str, field: str | None = None, rule: str | None = None
) -> tuple[Response, int]:
    body: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if rule is not None:
        body["rule"] = rule
    return jsonify(error=body), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> tuple[Response, int, dict[str, str]]:
        return (*error_response(e.status, e.code, e.message, e.field, e.rule), e.headers)

    @app.errorhandler(InvalidRequest)
    def _invalid_request(e: InvalidRequest) -> tuple[Response, int]:
        return error_response(422, "invalid_field", str(e), e.field, e.rule)

    @app.errorhandler(ModelUnavailable)
    def _model_unavailable(e: ModelUnavailable) -> tuple[Response, int]:
        return error_response(422, "invalid_field", str(e), "model", "must be a registered model (see /v1/models)")

    @app.errorhandler(JobNotFound)
    def _job_not_found(e: JobNotFound) -> tuple[Response, int]:
        return error_response(404, "job_not_found", f"no job with id {e}")

    @app.errorhandler(JobQuotaExceeded)
    def _quota_exceeded(e: JobQuotaExceeded) -> tuple[Response, int, dict[str, str]]:
        return _api_error(TooManyJobs(e.limit))

    @app.errorhandler(JobConflict)
    def _job_conflict(e: JobConflict) -> tuple[Response, int]:
        return error_response(409, "job_conflict", str(e))

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        # Keep werkzeug's headers (405's Allow), replace the HTML body with the JSON error shape.
        response = e.get_response()
        status = e.code or 500
        body, _ = error_response(status, _HTTP_CODES.get(status, "http_error"), e.description or e.name)
        response.set_data(body.get_data())
        response.content_type = "application/json"
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    def _database_unavailable(e: Exception) -> tuple[Response, int]:
        log.warning("database unavailable: %s", e)
        return error_response(503, "database_unavailable", "the job database is not reachable; retry later")

    @app.errorhandler(DBAPIError)
    def _database_error(e: DBAPIError) -> tuple[Response, int]:
        if e.connection_invalidated:
            return _database_unavailable(e)
        log.exception("database error")
        return error_response(500, "internal_error", "internal error")

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
