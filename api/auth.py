"""Who is calling: the bearer API key of a request, checked before every job endpoint, as `flask.g.principal`.

With authentication off every request acts as the anonymous principal, which sees every job.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """The caller of one request; `key_id` None: authentication is off (anonymous, sees every job)."""

    key_id: str | None
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None
    max_concurrent_jobs: int | None
