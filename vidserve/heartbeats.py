"""Reading worker liveness: each worker writes its state under a Redis key with a TTL (worker/heartbeat.py).

The admin dashboard and `/metrics` read the keys here, so neither imports the worker package.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from vidserve.settings import Settings

KEY_PATTERN = "vidserve:worker:{node}"
# A worker is live while its key exists: it survives two missed heartbeats (a slow step, a GC pause).
TTL_PERIODS = 3


def heartbeat_key(settings: Settings, node: str) -> str:
    return settings.redis_prefix + KEY_PATTERN.format(node=node)


def read_heartbeats(settings: Settings, client: redis.Redis | None = None) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat, sorted by node name."""
    own = client is None
    client = client or redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        keys = sorted(client.scan_iter(match=heartbeat_key(settings, "*"), count=500))
        found = []
        for raw in client.mget(keys) if keys else []:
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
        return sorted(found, key=lambda beat: beat.get("node", ""))
    finally:
        if own:
            client.close()
