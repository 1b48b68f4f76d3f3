"""Who is calling: the bearer API key of a request, checked before every job endpoint, as `flask.g.principal`.

A view declares the scope it needs with `@requires(scope)`; a hook run before every request authenticates the
requests to such views (401 without a live key, 403 without the scope) and sets `g.principal`. An unmarked view
under `/v1/` needs `admin`; the others (health, metrics, OpenAPI, the admin dashboard with its own token) stay
open and get no principal. With
authentication off (VIDSERVE_AUTH=off) every request acts as the anonymous principal, which sees every job.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from api.errors import Forbidden, Unauthorized
from api.services import services
from vidserve.keys import SCOPES

View = TypeVar("View", bound=Callable[..., Any])
ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """The caller of one request; `key_id` None: authentication is off (anonymous, sees every job)."""

    key_id: str | None
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None
    max_concurrent_jobs: int | None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    @property
    def api_key_id(self) -> uuid.UUID | None:
        """The key the caller's new jobs belong to (None: authentication off)."""
        return None if self.key_id is None else uuid.UUID(self.key_id)

    @property
    def job_owner(self) -> uuid.UUID | None:
        """The key whose jobs this caller may see; None: every job (an admin key, or authentication off)."""
        return None if ADMIN in self.scopes else self.api_key_id

    def job_limit(self, default: int) -> int:
        """The most unfinished jobs the caller may have (0: unlimited): the key's own limit, else `default`."""
        if self.key_id is None:
            return 0
        return default if self.max_concurrent_jobs is None else self.max_concurrent_jobs


ANONYMOUS = Principal(
    key_id=None, name="anonymous", scopes=frozenset(SCOPES), rate_limit_per_minute=None, max_concurrent_jobs=None
)


def requires(scope: str) -> Callable[[View], View]:
    """Mark a view as needing an API key with `scope` (an `admin` key has every scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def mark(view: View) -> View:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


def principal() -> Principal:
    """The caller of the current request (set by the hook before any view that `requires` a scope)."""
    return g.principal


def init_app(app: Flask) -> None:
    """Authenticate before every request; register before any other hook that reads `g.principal`."""
    app.before_request(_authenticate)


def required_scope(view: Callable[..., Any] | None, rule: str) -> str | None:
    """The scope a view needs: its `requires` mark; an unmarked `/v1/` view needs `admin` (fails closed)."""
    scope = getattr(view, "required_scope", None)
    if scope is None and rule.startswith("/v1/"):
        return ADMIN
    return scope


def _authenticate() -> None:
    if request.url_rule is None:
        return  # no route: a 404/405 follows
    scope = required_scope(current_app.view_functions.get(request.endpoint or ""), request.url_rule.rule)
    if scope is None:
        return
    svc = services()
    if not svc.settings.auth_enabled:
        g.principal = ANONYMOUS
        return
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
    key = svc.keys.verify(token.strip())
    if key is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)", invalid_token=True)
    g.principal = Principal(
        key_id=str(key.id),
        name=key.name,
        scopes=frozenset(key.scopes),
        rate_limit_per_minute=key.rate_limit_per_minute,
        max_concurrent_jobs=key.max_concurrent_jobs,
    )
    if not g.principal.allows(scope):
        raise Forbidden(scope)
