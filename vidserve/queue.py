"""The Celery application both sides share: the API publishes by task name, workers consume.

One queue per model (`gen.<model>`) carries wake-ups (a job id and its model); the `webhooks` queue carries
delivery ids. `announce_job` and `announce_delivery` are the one way every part publishes from the outbox.
"""

from __future__ import annotations

import functools
import logging
import uuid

from celery import Celery

from vidserve.jobs import JobStore
from vidserve.settings import Settings

log = logging.getLogger(__name__)

GENERATE_TASK = "worker.tasks.generate"
DELIVER_WEBHOOK_TASK = "worker.tasks.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"


def queue_for(model: str) -> str:
    return f"gen.{model}"


def make_celery(settings: Settings) -> Celery:
    app = Celery("vidserve", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # The window: a worker holds at most `slots` unacknowledged jobs; acks after the job ends, so a
        # killed worker's messages are re-delivered. Postgres claims make re-deliveries harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": 3600,
            **({"global_keyprefix": settings.redis_prefix} if settings.redis_prefix else {}),
        },
        task_default_queue=WEBHOOK_QUEUE,
    )
    return app


@functools.cache
def celery_for(redis_url: str) -> Celery:
    return make_celery(Settings(redis_url=redis_url))


def publish_job(app: Celery, job_id: uuid.UUID | str, model: str) -> None:
    """One wake-up on the model's queue: the worker that takes it claims the fairest queued job of the model
    (not necessarily this one), so the broker's FIFO never decides the order."""
    app.send_task(GENERATE_TASK, args=[str(job_id), model], queue=queue_for(model))


def publish_delivery(app: Celery, delivery_id: uuid.UUID | str, countdown: float | None = None) -> None:
    app.send_task(DELIVER_WEBHOOK_TASK, args=[str(delivery_id)], queue=WEBHOOK_QUEUE, countdown=countdown)


def announce_job(app: Celery, jobs: JobStore, job_id: uuid.UUID | str, model: str) -> bool:
    """Publish a stored job's wake-up and set its outbox mark; False (logged) when the broker or the database is
    away: the job stays queued and unmarked, and a sweeper publishes it later. Never raises."""
    try:
        publish_job(app, job_id, model)
        jobs.mark_published(uuid.UUID(str(job_id)))
    except Exception as exc:
        log.warning("job %s stored but not published (the sweeper will): %s", job_id, exc)
        return False
    return True


def announce_delivery(app: Celery, delivery_id: uuid.UUID | str, countdown: float | None = None) -> bool:
    """Publish a stored webhook delivery's message; False (logged) when the broker is away: the delivery stays
    pending and a sweeper re-publishes it. Never raises."""
    try:
        publish_delivery(app, delivery_id, countdown=countdown)
    except Exception as exc:
        log.warning("webhook delivery %s stored but not published (the sweeper will): %s", delivery_id, exc)
        return False
    return True
