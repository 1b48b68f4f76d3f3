"""What a worker process holds: settings, the job store, the video store, the Celery app and its engines.

Built once per process from the environment (`current()`); tests build their own with `WorkerContext.build`.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

from celery import Celery

from engine.registry import ModelRegistry
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.queue import announce_delivery, make_celery
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from worker.engines import EnginePool
from worker.preemption import Slots

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    celery: Celery
    store: JobStore
    videos: VideoStore
    registry: ModelRegistry
    engines: EnginePool
    # Set when Celery begins a warm shutdown: running jobs are stopped and handed back to the queue.
    shutting_down: threading.Event = field(default_factory=threading.Event)
    node: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # The jobs this process runs now, one per slot: which gives way to a higher-priority job (worker.preemption).
    slots: Slots = field(default_factory=Slots)

    @classmethod
    def build(cls, settings: Settings, celery: Celery | None = None, models: list[str] | None = None) -> WorkerContext:
        """`models`: the models this process serves (default: the settings', else every registered one)."""
        celery = celery or make_celery(settings)
        videos = VideoStore(settings)
        registry = ModelRegistry.from_file(settings.models_file or None, settings.model_dir)
        served = models if models is not None else (settings.served_models or registry.names())
        store = JobStore(
            settings.database_url,
            lambda job: job_to_dict(job, videos.presigned_url),
            publish_delivery=functools.partial(announce_delivery, celery),
        )
        return cls(settings, celery, store, videos, registry, EnginePool(registry, served))

    def new_owner(self) -> str:
        """A lease owner for one attempt: which process, and which attempt within it."""
        return f"{self.node}/{uuid.uuid4().hex[:12]}"

    def close(self) -> None:
        self.engines.close()


_current: WorkerContext | None = None
_lock = threading.Lock()


def current() -> WorkerContext:
    """This process's context, built from the environment on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                from worker.celery_app import app

                _current = WorkerContext.build(Settings.from_env(), app)
    return _current


def install(ctx: WorkerContext | None) -> None:
    """Make `ctx` the process's context (the CLI does this before starting Celery)."""
    global _current
    _current = ctx
