"""Preemption: when every slot of a worker is busy, a queued job of a higher priority takes over the slot of the
running job of the lowest priority. That job stops at its next checkpoint and goes back to the queue, where it
resumes from that step; the slot then runs the job that took it over.

`Slots` knows the jobs this process runs (one per Celery slot) and says which of them gives way. The taking job
is claimed in Postgres (`JobStore.claim_next(above_priority=...)`), so across workers each waiting job takes
over one slot at most.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Running(Protocol):
    """What `Slots` reads of a running attempt (worker.tasks.Attempt)."""

    priority: int
    claimed_at: float
    taker: Any  # the job claimed to take over this slot, or None


class Slots:
    """The attempts this process runs now, one per slot."""

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity  # the process's slots, once Celery says how many (0: the settings' worker_slots)
        self._lock = threading.Lock()
        self._running: list[Running] = []

    @contextmanager
    def running(self, attempt: Running) -> Iterator[None]:
        """Count `attempt` as holding a slot while the block runs."""
        with self._lock:
            self._running.append(attempt)
        try:
            yield
        finally:
            with self._lock:
                self._running.remove(attempt)

    def gives_way(self, attempt: Running, capacity: int) -> bool:
        """Whether `attempt` is the one to give its slot to a higher-priority job now: all `capacity` slots are busy
        and, of the jobs no other job has taken over yet, it has the lowest priority (the latest claimed of those:
        it has done the least)."""
        with self._lock:
            if len(self._running) < capacity:
                return False  # a free slot takes the waiting job's wake-up
            candidates = [a for a in self._running if a.taker is None]
        return bool(candidates) and min(candidates, key=lambda a: (a.priority, -a.claimed_at)) is attempt
