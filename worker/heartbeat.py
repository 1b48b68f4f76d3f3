"""Worker liveness in Redis: each worker process writes what it serves and what it is doing under a key with a TTL.

A worker that dies stops refreshing its key and drops out after `TTL_PERIODS` heartbeat periods. The admin
dashboard and `/metrics` read these keys (`vidserve.heartbeats`); nothing here imports torch unless the worker has.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import redis
from sqlalchemy import select

from vidserve.db import session_factory
from vidserve.heartbeats import TTL_PERIODS, heartbeat_key
from vidserve.schema import Job, JobStatus
from vidserve.settings import Settings

log = logging.getLogger(__name__)


def device_memory() -> list[dict[str, Any]]:
    """Allocated/reserved/total memory per CUDA device, when this process has torch and a GPU; else []."""
    torch = sys.modules.get("torch")  # never import torch just to report on it
    if torch is None or not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        devices.append(
            {
                "device": f"cuda:{index}",
                "allocated_bytes": int(torch.cuda.memory_allocated(index)),
                "reserved_bytes": int(torch.cuda.memory_reserved(index)),
                "free_bytes": int(free),
                "total_bytes": int(total),
            }
        )
    return devices


class Heartbeat:
    """A daemon thread that writes this worker's state every `settings.heartbeat_seconds`.

    `node` is the worker context's node name, the prefix of every lease owner it writes; the jobs it holds
    (its current batch) are read back from Postgres by that prefix, so the task code needs no bookkeeping.
    """

    def __init__(self, settings: Settings, node: str, models: list[str], slots: int, kind: str = "gen") -> None:
        self.settings = settings
        self.node = node
        self.models = list(models)
        self.slots = slots
        self.kind = kind
        self.started_at = dt.datetime.now(dt.UTC).isoformat()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._sessions = session_factory(settings.database_url)

    def state(self) -> dict[str, Any]:
        with self._sessions() as s:
            running = list(
                s.execute(
                    select(Job.id, Job.model, Job.progress).where(
                        Job.status == JobStatus.RUNNING, Job.lease_owner.like(f"{self.node}/%")
                    )
                )
            )
        return {
            "node": self.node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "kind": self.kind,
            "models": self.models,
            "slots": self.slots,
            "busy": len(running),
            "batch": [{"job_id": str(r.id), "model": r.model, "progress": round(r.progress, 4)} for r in running],
            "devices": device_memory(),
            "started_at": self.started_at,
            "seen_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    def beat(self) -> None:
        ttl = max(1, int(self.settings.heartbeat_seconds * TTL_PERIODS))
        self._redis.set(heartbeat_key(self.settings, self.node), json.dumps(self.state()), ex=ttl)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the key at once: a clean shutdown is not a dead worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._redis.delete(heartbeat_key(self.settings, self.node))
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.beat()
            except Exception:  # Redis or Postgres away: the worker keeps working; the key expires meanwhile
                log.warning("heartbeat failed", exc_info=True)
            self._stop.wait(max(0.1, self.settings.heartbeat_seconds - (time.monotonic() - started)))
