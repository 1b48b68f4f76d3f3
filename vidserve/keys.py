"""The API key store: create, verify, list and revoke the bearer tokens of the REST API.

A token is `vs_` plus 32 random bytes (base64url); only its SHA-256 is stored, with a short prefix to tell keys
apart in listings. A revoked key stops working at the next request: nothing caches a verification.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

from sqlalchemy import ColumnElement, select

from vidserve.db import session_factory
from vidserve.schema import ApiKey

SCOPES = ("jobs:read", "jobs:write", "jobs:priority", "admin")
# The scope a key needs to submit `priority: high` (an `admin` key has it too).
PRIORITY_SCOPE = "jobs:priority"
TOKEN_PREFIX = "vs_"
# "vs_" and 8 characters of the token: enough to tell keys apart, far too little to guess the rest.
DISPLAY_PREFIX_CHARS = len(TOKEN_PREFIX) + 8
# last_used_at is written at most this often per key, so busy keys do not turn every read into a write.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


class KeyNotFound(LookupError):
    pass


class AmbiguousKey(LookupError):
    """A prefix that more than one key starts with."""


def hash_token(token: str) -> str:
    # A plain SHA-256 suffices: the token has 256 bits of entropy, so a stolen hash cannot be brute-forced.
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class KeyStore:
    def __init__(self, database_url: str) -> None:
        self._sessions = session_factory(database_url)

    def create(
        self,
        name: str,
        scopes: list[str],
        max_concurrent_jobs: int | None = None,
        rate_limit_per_minute: int | None = None,
        weight: float = 1.0,
    ) -> tuple[ApiKey, str]:
        """Store a new key; returns it with its token, which is never shown again.

        `weight`: the key's share of the fair queue against other keys' (2: twice a weight-1 key's)."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
        if not name.strip():
            raise ValueError("a key needs a name")
        for label, value in (
            ("max_concurrent_jobs", max_concurrent_jobs),
            ("rate_limit_per_minute", rate_limit_per_minute),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{label} must be 0 or more")
        if not weight > 0:
            raise ValueError("weight must be more than 0")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=uuid.uuid4(),
            name=name.strip(),
            prefix=token[:DISPLAY_PREFIX_CHARS],
            token_sha256=hash_token(token),
            scopes=sorted(set(scopes), key=SCOPES.index),
            max_concurrent_jobs=max_concurrent_jobs,
            rate_limit_per_minute=rate_limit_per_minute,
            weight=weight,
        )
        with self._sessions() as s, s.begin():
            s.add(key)
        return key, token

    def verify(self, token: str) -> ApiKey | None:
        """The live key whose token this is (and mark it used), or None: unknown, malformed or revoked."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        now = _now()
        with self._sessions() as s, s.begin():
            key = s.scalars(
                select(ApiKey).where(ApiKey.token_sha256 == hash_token(token), ApiKey.revoked_at.is_(None))
            ).first()
            if key is None:
                return None
            if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
                key.last_used_at = now
        return key

    def list(self) -> list[ApiKey]:
        with self._sessions() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))

    def revoke(self, id_or_prefix: str) -> ApiKey:
        """Revoke the key with this id, or the one key whose display prefix starts with this text."""
        with self._sessions() as s, s.begin():
            matches = list(s.scalars(select(ApiKey).where(self._matching(id_or_prefix)).limit(2)))
            if not matches:
                raise KeyNotFound(id_or_prefix)
            if len(matches) > 1:
                raise AmbiguousKey(id_or_prefix)
            key = matches[0]
            if key.revoked_at is None:
                key.revoked_at = _now()
        return key

    @staticmethod
    def _matching(id_or_prefix: str) -> ColumnElement[bool]:
        try:
            return ApiKey.id == uuid.UUID(id_or_prefix)
        except ValueError:
            if len(id_or_prefix) < len(TOKEN_PREFIX) + 4:
                raise KeyNotFound(
                    f"{id_or_prefix!r}: give the key's id or at least 7 characters of its prefix"
                ) from None
            escaped = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return ApiKey.prefix.like(escaped + "%", escape="\\")
