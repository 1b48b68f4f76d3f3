"""What the API's views talk to: settings, model registry, job, video and API key stores and the Celery app.

Built once per app by `create_app` and kept in `app.extensions`; views reach it through `services()`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import current_app

from engine.registry import ModelRegistry
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.keys import KeyStore
from vidserve.queue import announce_delivery, announce_job, make_celery
from vidserve.schema import Job
from vidserve.settings import Settings
from vidserve.storage import VideoStore

log = logging.getLogger(__name__)
EXTENSION = "vidserve"


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    jobs: JobStore
    videos: VideoStore | None  # None when no S3 endpoint is configured
    celery: Celery
    keys: KeyStore

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        registry = ModelRegistry.from_file(settings.models_file or None, settings.model_dir)
        videos = VideoStore(settings) if settings.s3_endpoint else None
        celery = make_celery(settings)
        presign = videos.presigned_url if videos else None
        jobs = JobStore(
            settings.database_url,
            view=lambda job: job_to_dict(job, presign),
            publish_delivery=functools.partial(announce_delivery, celery),
        )
        return cls(settings, registry, jobs, videos, celery, KeyStore(settings.database_url))

    def view_job(self, job: Job) -> dict[str, Any]:
        """The public JSON of a job, with a fresh presigned URL when its video exists and its place while queued."""
        return self.view_jobs([job])[0]

    def view_jobs(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """`view_job` of a page of jobs: their queue places come from one `JobStore.queue_places` for the page."""
        places = self.jobs.queue_places(jobs)
        presign = self.videos.presigned_url if self.videos else None
        return [job_to_dict(job, presign, places.get(job.id)) for job in jobs]

    def publish(self, job: Job) -> bool:
        """Enqueue a stored job; False when the broker is away (the worker's sweeper publishes it later)."""
        return announce_job(self.celery, self.jobs, job.id, job.model)


def services() -> Services:
    return current_app.extensions[EXTENSION]
