"""The sweeper: a thread in every worker that repairs what a crash or a lost message left behind.

Postgres is the source of truth and Redis only carries messages, so each pass returns dead workers'
expired leases to the queue and re-publishes queued jobs and webhook deliveries whose message may be lost. It
also deletes the checkpoints of jobs that ended without their worker (failed by the sweeper, canceled while
queued, finished by a worker that could not delete it): a worker deletes its own job's checkpoint at the end.
Several sweepers at once are harmless: claims are conditional, duplicate messages do nothing.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

import redis
from celery import Celery

from vidserve.jobs import JobStore
from vidserve.queue import announce_delivery, announce_job
from vidserve.storage import VideoStore

log = logging.getLogger(__name__)

# A key the sweepers keep in the broker's Redis. It lives and dies with the queued messages: when it is gone,
# Redis lost its data (restarted without persistence, flushed, failed over) and every queued job is re-published.
BROKER_MARK = "vidserve:broker-mark"


@dataclass(frozen=True)
class SweepReport:
    jobs_published: int
    deliveries_published: int
    checkpoints_deleted: int = 0


class Sweeper:
    def __init__(
        self,
        store: JobStore,
        celery: Celery,
        interval: float,
        max_attempts: int,
        republish_after: float = 600.0,
        videos: VideoStore | None = None,
    ) -> None:
        self.store = store
        self.videos = videos
        self.celery = celery
        self.interval = interval
        self.max_attempts = max_attempts
        self.republish_after = republish_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> SweepReport:
        lost = self.broker_lost_messages()
        if lost:
            log.warning("sweeper: the broker lost its data; re-publishing every queued job")
        jobs, deliveries = self.store.sweep(self.max_attempts, self.republish_after, republish_all=lost)
        published = 0
        for job in jobs:
            if announce_job(self.celery, self.store, job.id, job.model):
                published += 1
                log.info("sweeper: published job %s (%s)", job.id, job.model)
        redelivered = sum(announce_delivery(self.celery, delivery_id) for delivery_id in deliveries)
        if redelivered:
            log.info("sweeper: re-published %d webhook deliveries", redelivered)
        return SweepReport(published, redelivered, self.delete_orphan_checkpoints())

    def delete_orphan_checkpoints(self) -> int:
        """Delete the checkpoints whose job has ended (or is gone); returns how many."""
        if self.videos is None:
            return 0
        stored = self.videos.checkpoint_job_ids()
        orphans = sorted(set(stored) - self.store.unfinished(stored))
        for job_id in orphans:
            self.videos.delete(VideoStore.checkpoint_key(job_id))
            log.info("sweeper: deleted the checkpoint of ended job %s", job_id)
        return len(orphans)

    def broker_lost_messages(self) -> bool:
        """True when the broker's mark is missing; it is set again at once, so one sweeper of many answers True."""
        options = self.celery.conf.broker_transport_options or {}
        key = options.get("global_keyprefix", "") + BROKER_MARK
        client = redis.Redis.from_url(self.celery.conf.broker_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return bool(client.set(key, uuid.uuid4().hex, nx=True))
        finally:
            client.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vidserve-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except Exception:  # Postgres or Redis away: try again next pass
                log.warning("sweep failed", exc_info=True)
