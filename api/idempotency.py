"""The `Idempotency-Key` header on job submits (IETF draft "The Idempotency-Key HTTP Header Field").

The first request with a key inserts an in-flight row (the unique (owner, key) makes that a lock), runs, and
stores its response; a repeat with the same request replays it, one with a different request is refused (422),
one while the first still runs is told to retry (409). Keys are per API key and expire after
VIDSERVE_IDEMPOTENCY_TTL_SECONDS. A request that fails stores nothing, so it can be retried with its key. A row
left in flight longer than IN_FLIGHT_TIMEOUT (its API process died mid-request) is taken over by the next request
with that key, instead of answering 409 until it expires.

The job a submit creates is linked to its key in the job's own transaction (`claimed_record_id`, passed to
`JobStore.create`), so a process that dies after the job is stored but before its response is leaves no gap: the
stale claim is answered from the linked job (the view's `rebuild`), never with a second job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Response, g, make_response, request
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert

from api.auth import principal
from api.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from api.services import services
from api.validation import MAX_JSON_DEPTH, json_depth
from vidserve.db import session_factory
from vidserve.schema import IdempotencyRecord, Job

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# The response headers a replay repeats (the body and status are always repeated).
KEPT_HEADERS = ("Location",)
ANONYMOUS_OWNER = "anonymous"
# A submit takes milliseconds; a claim this old belongs to a request whose process died before it could finish.
IN_FLIGHT_TIMEOUT = dt.timedelta(seconds=60)


def fingerprint() -> str:
    """SHA-256 of method, path and the body as canonical JSON (form fields for a form, raw bytes otherwise)."""
    try:
        body: Any = request.get_json(silent=True) if request.is_json else None
    except RecursionError:
        body = None
    if body is not None and json_depth(body) > MAX_JSON_DEPTH + 1:
        body = None  # the view refuses it; re-encoding it here could exhaust the stack first
    if body is None and request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        request.get_data(cache=True)  # kept, so the view can still read the raw body after the form is parsed
        body = {name: request.form.getlist(name) for name in request.form} | {
            f"file:{name}": [f.filename for f in request.files.getlist(name)] for name in request.files
        }
    if body is None:
        canonical = request.get_data()
    else:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def claimed_record_id() -> int | None:
    """The idempotency record this request claimed, for `JobStore.create` to link its job to; None without a key."""
    return g.get("idempotency_record_id")


def idempotent(rebuild: Callable[[Job], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a submit view the Idempotency-Key semantics (without the header it runs as usual).

    `rebuild(job)` renders the view's success response for a job it created, answering a claim whose request
    died after storing the job (the job was linked to the key in its own transaction) but before its response.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            key = request.headers.get(HEADER)
            if key is None:
                return view(*args, **kwargs)
            key = _parse_key(key)
            store = IdempotencyStore(services().settings.database_url)
            owner = principal().key_id or ANONYMOUS_OWNER
            claim = store.begin(owner, key, fingerprint(), services().settings.idempotency_ttl_seconds)
            if isinstance(claim, IdempotencyRecord):
                if claim.status_code is None:  # its request died after creating the job: answer from the job
                    return _replay(_finish(store, owner, key, rebuild(services().jobs.get(claim.job_id))))
                return _replay(claim)
            g.idempotency_record_id = claim
            try:
                response = make_response(view(*args, **kwargs))
            except BaseException:
                store.abandon(owner, key)
                raise
            if response.status_code < 300 and response.is_json:
                _finish(store, owner, key, response)
            else:
                store.abandon(owner, key)
            return response

        wrapped.idempotent = True  # type: ignore[attr-defined]  # read by api.openapi
        return wrapped

    return decorate


def _finish(store: IdempotencyStore, owner: str, key: str, result: Any) -> IdempotencyRecord:
    response = make_response(result)
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return store.finish(owner, key, response.status_code, response.get_json(), headers)


def _parse_key(raw: str) -> str:
    # The draft makes the key an sf-string ("..."); a bare token is accepted too, as most clients send that.
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise InvalidIdempotencyKey(
            f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable characters", field=HEADER, rule="1-255 printable chars"
        )
    return key


def _replay(record: IdempotencyRecord) -> Response:
    response = make_response(json.dumps(record.response_body), record.status_code)
    response.content_type = "application/json"
    response.headers.update(record.response_headers or {})
    response.headers[REPLAYED_HEADER] = "true"
    return response


class IdempotencyStore:
    """The idempotency_keys table: one row per (owner, key), in flight until its response is stored."""

    def __init__(self, database_url: str) -> None:
        self._sessions = session_factory(database_url)

    def begin(self, owner: str, key: str, fingerprint: str, ttl_seconds: int) -> int | IdempotencyRecord:
        """Claim the key for a new request (the new record's id), or the record to answer from: a finished one,
        or one whose request died after creating its job (`status_code` NULL, `job_id` set).

        Raises IdempotencyKeyReused for another request's key and IdempotencyKeyInUse while it is in flight.
        """
        now = dt.datetime.now(dt.UTC)
        with self._sessions() as s, s.begin():
            # Expired records of every owner go first, so an expired key starts afresh and the table stays small;
            # so do claims abandoned by a dead request before it made a job (timed by the database's clock, which
            # stamped them).
            s.execute(
                delete(IdempotencyRecord).where(
                    or_(
                        IdempotencyRecord.expires_at < now,
                        IdempotencyRecord.status_code.is_(None)
                        & IdempotencyRecord.job_id.is_(None)
                        & (IdempotencyRecord.created_at < func.now() - IN_FLIGHT_TIMEOUT),
                    )
                )
            )
            claimed = s.execute(
                insert(IdempotencyRecord)
                .values(
                    owner=owner, key=key, fingerprint=fingerprint, expires_at=now + dt.timedelta(seconds=ttl_seconds)
                )
                .on_conflict_do_nothing(constraint="uq_idempotency_keys_owner_key")
                .returning(IdempotencyRecord.id)
            ).first()
            if claimed is not None:
                return int(claimed[0])
            record = s.scalars(
                select(IdempotencyRecord).where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
            ).first()
            stale = record is not None and s.scalar(select(func.now() - IN_FLIGHT_TIMEOUT > record.created_at))
        if record is None:  # abandoned by its failed request between our insert and this read
            raise IdempotencyKeyInUse(f"a request with this {HEADER} has just failed; retry", field=HEADER)
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"this {HEADER} was used with a different request; use a new key for a new request", field=HEADER
            )
        if record.status_code is None and not (record.job_id is not None and stale):
            raise IdempotencyKeyInUse(
                f"a request with this {HEADER} is still being processed; retry shortly", field=HEADER
            )
        return record

    def finish(self, owner: str, key: str, status_code: int, body: Any, headers: dict[str, str]) -> IdempotencyRecord:
        with self._sessions() as s, s.begin():
            return s.scalars(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
                .values(status_code=status_code, response_body=body, response_headers=headers)
                .returning(IdempotencyRecord),
                execution_options={"synchronize_session": False},
            ).one()

    def abandon(self, owner: str, key: str) -> None:
        """Forget an in-flight key whose request failed, so the client may retry with the same key (a key whose
        job was stored stays: a retry is answered from that job)."""
        with self._sessions() as s, s.begin():
            s.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.owner == owner,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.status_code.is_(None),
                    IdempotencyRecord.job_id.is_(None),
                )
            )
