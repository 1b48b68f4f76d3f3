"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: Postgres, Redis and S3 answer).

A failed readiness check answers 503 with every dependency's result, so the body names what is down.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.services import Services, services
from vidserve.db import get_engine

bp = Blueprint("health", __name__)

PROBE_TIMEOUT_SECONDS = 2.0


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    svc = services()
    checks: dict[str, dict[str, object]] = {}
    for name, probe in _probes(svc).items():
        try:
            probe()
            checks[name] = {"ok": True}
        except Exception as e:
            checks[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    failed = [name for name, result in checks.items() if not result["ok"]]
    status = 503 if failed else 200
    return jsonify(status="unavailable" if failed else "ready", failed=failed, checks=checks), status


def _probes(svc: Services) -> dict[str, Callable[[], None]]:
    return {"postgres": lambda: _ping_postgres(svc), "redis": lambda: _ping_redis(svc), "s3": lambda: _ping_s3(svc)}


def _ping_postgres(svc: Services) -> None:
    with get_engine(svc.settings.database_url).connect() as conn:
        conn.execute(text("SELECT 1"))


def _ping_redis(svc: Services) -> None:
    client = redis.Redis.from_url(
        svc.settings.redis_url, socket_connect_timeout=PROBE_TIMEOUT_SECONDS, socket_timeout=PROBE_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    finally:
        client.close()


def _ping_s3(svc: Services) -> None:
    if svc.videos is None:
        raise RuntimeError("VIDSERVE_S3_ENDPOINT is not set")
    svc.videos.ping()
