"""Rate limits counted in Redis so every API process shares one budget per client: job submissions per key,
and admin sign-in attempts per address.

A client is its API key (`g.principal.key_id`) or, without one, its address; views that create jobs call
`check_submission_rate()`, the admin sign-in `check_admin_login_rate()`. Over the limit is a 429 with
`Retry-After`; a Redis outage lets requests through.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, request
from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from api.errors import RateLimited
from vidserve.settings import Settings

log = logging.getLogger(__name__)
EXTENSION = "vidserve.rate_limit"
# Job creation through either API (/v1/jobs, /v1/videos) draws on one budget.
SUBMIT_SCOPE = "submit"
# Admin sign-in attempts per client address in any minute: plenty for a person, a crawl for a token guesser.
LOGIN_SCOPE = "admin-login"
ADMIN_LOGIN_ATTEMPTS_PER_MINUTE = 10
# A hung Redis must not hold a submission for long: past this the request goes through unlimited.
REDIS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class RateState:
    """What one counted request left of its client's budget, for the RateLimit-* headers."""

    limit: int
    remaining: int
    reset_seconds: int  # until the oldest counted request leaves the window
    exceeded: bool = False  # this request was refused for it

    @property
    def retry_after(self) -> int:
        return max(1, self.reset_seconds)


class SubmissionLimiter:
    """A moving window per client: never more than `limit` submissions in any `window_seconds`."""

    def __init__(self, settings: Settings, window_seconds: int = 60) -> None:
        # Keys carry the deployment's Redis prefix, so deployments (and test runs) sharing a DB stay apart.
        storage = RedisStorage(
            settings.redis_url,
            key_prefix=f"{settings.redis_prefix}ratelimit",
            wrap_exceptions=True,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self.default_per_minute = settings.rate_limit_per_minute
        self.window_seconds = window_seconds

    def hit(
        self,
        client: str,
        per_minute: int,
        scope: str = SUBMIT_SCOPE,
        what: str = "job submissions",
        count: bool = True,
    ) -> RateState | None:
        """Count one request of `client` (with `count` False, only look whether one more would be allowed); raise
        RateLimited over the limit, None when Redis is away (fail open)."""
        item = RateLimitItemPerSecond(per_minute, self.window_seconds)
        try:
            allowed = self._limiter.hit(item, scope, client) if count else self._limiter.test(item, scope, client)
            stats = self._limiter.get_window_stats(item, scope, client)
        except StorageError as e:
            log.warning("rate limit storage unreachable, request not limited: %s", e)
            return None
        state = RateState(per_minute, stats.remaining, max(0, math.ceil(stats.reset_time - time.time())), not allowed)
        if not allowed:
            g.rate_state = state
            raise RateLimited(
                f"more than {per_minute} {what} in {self.window_seconds} seconds; "
                f"retry after {state.retry_after} seconds"
            )
        return state


def init_rate_limits(app: Flask, settings: Settings, window_seconds: int = 60) -> None:
    """Give `app` its limiter and the after-request hook that adds the RateLimit-* headers."""
    app.extensions[EXTENSION] = SubmissionLimiter(settings, window_seconds)
    app.after_request(_add_headers)


def check_submission_rate() -> None:
    """Count this request against its client's submission budget (call it after authentication)."""
    limiter: SubmissionLimiter = current_app.extensions[EXTENSION]
    principal = getattr(g, "principal", None)
    key_id = getattr(principal, "key_id", None)
    # A key's own limit (None: the default) wins; 0 means unlimited.
    per_minute = getattr(principal, "rate_limit_per_minute", None)
    if per_minute is None:
        per_minute = limiter.default_per_minute
    if per_minute <= 0:
        return
    client = f"key:{key_id}" if key_id is not None else f"addr:{request.remote_addr}"
    state = limiter.hit(client, per_minute)
    if state is not None:
        g.rate_state = state


def check_admin_login_rate(count: bool = True) -> None:
    """Count one admin sign-in attempt of this client address; RateLimited past ADMIN_LOGIN_ATTEMPTS_PER_MINUTE.
    With `count` False, RateLimited when the address has no attempt left, counting none."""
    limiter: SubmissionLimiter = current_app.extensions[EXTENSION]
    client = f"addr:{request.remote_addr}"
    state = limiter.hit(client, ADMIN_LOGIN_ATTEMPTS_PER_MINUTE, LOGIN_SCOPE, "sign-in attempts", count)
    if state is not None:
        g.rate_state = state


def _add_headers(response: Response) -> Response:
    state: RateState | None = g.get("rate_state")
    if state is not None:
        response.headers["RateLimit-Limit"] = str(state.limit)
        response.headers["RateLimit-Remaining"] = str(state.remaining)
        response.headers["RateLimit-Reset"] = str(state.reset_seconds)
        if state.exceeded:  # (another 429, the concurrent-job quota's, sets its own Retry-After)
            response.headers["Retry-After"] = str(state.retry_after)
    return response


# ---- OpenAPI fragments (used by api.openapi and api.openai_videos) --------------------------------------

_INTEGER = {"type": "integer", "minimum": 0}
OPENAPI_HEADERS: dict[str, Any] = {
    "RateLimit-Limit": {"description": "submissions the client may make in any 60 s", "schema": _INTEGER},
    "RateLimit-Remaining": {"description": "submissions left in the current window", "schema": _INTEGER},
    "RateLimit-Reset": {"description": "seconds until the oldest counted submission leaves it", "schema": _INTEGER},
}
OPENAPI_429_HEADERS: dict[str, Any] = {
    **OPENAPI_HEADERS,
    "Retry-After": {
        "description": "seconds until a submission is accepted again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
}
RATE_LIMITED_DESCRIPTION = (
    "more submissions than the client's rate limit (`rate_limited`; per API key, or per address without one)"
)
