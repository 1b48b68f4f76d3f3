"""The Celery application both sides share: the API publishes by task name, workers consume.

One queue per model (`gen.<model>`) carries job ids; the `webhooks` queue carries delivery ids.
"""

from __future__ import annotations

import functools
import uuid

from celery import Celery

from vidserve.settings import Settings

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
    app.send_task(GENERATE_TASK, args=[str(job_id)], queue=queue_for(model))


def publish_delivery(app: Celery, delivery_id: uuid.UUID | str, countdown: float | None = None) -> None:
    app.send_task(DELIVER_WEBHOOK_TASK, args=[str(delivery_id)], queue=WEBHOOK_QUEUE, countdown=countdown)
