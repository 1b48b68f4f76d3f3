"""The worker's Celery app: the generate and webhook tasks registered by name, and the process lifecycle.

`celery -A worker.celery_app worker -Q gen.<model>,...` works, but `vidserve worker` (generation) and
`vidserve webhooks` (delivery) set the pool up as intended: threads, one slot per job in the window.
What a process does follows from the queues it consumes: engines for its `gen.<model>` queues, a webhook
sender for `webhooks`, and a sweeper in every process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Reject
from sqlalchemy.exc import OperationalError

from vidserve.queue import DELIVER_WEBHOOK_TASK, GENERATE_TASK, WEBHOOK_QUEUE, make_celery, queue_for
from vidserve.settings import Settings
from worker import context, tasks
from worker.heartbeat import Heartbeat
from worker.sweeper import Sweeper
from worker.webhooks import WebhookSender, celery_scheduler

log = logging.getLogger(__name__)

app: Celery = make_celery(Settings.from_env())

_sweeper: Sweeper | None = None
_sender: WebhookSender | None = None
_heartbeat: Heartbeat | None = None


def _db_retry_countdown(task: Task) -> float:
    return min(60.0, 2.0**task.request.retries)


@app.task(name=GENERATE_TASK, bind=True, max_retries=20)
def generate(self: Task, job_id: str, model: str | None = None) -> str:
    try:
        outcome = tasks.generate(context.current(), job_id, model)
    except OperationalError as exc:
        # Postgres away before the claim: the message comes back later (the claim makes it safe).
        raise self.retry(exc=exc, countdown=_db_retry_countdown(self)) from exc
    if outcome == "declined":
        raise Reject("worker shutting down", requeue=True)  # back to the queue, unacknowledged, for another worker
    return outcome


@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, max_retries=20)
def deliver_webhook(self: Task, delivery_id: str) -> str:
    try:
        return webhook_sender().deliver(delivery_id).status
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=_db_retry_countdown(self)) from exc


def webhook_sender() -> WebhookSender:
    global _sender
    if _sender is None:
        _sender = WebhookSender(context.current().settings, celery_scheduler(app))
    return _sender


# ---- process lifecycle ---------------------------------------------------------------------------------


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _sweeper, _heartbeat
    ctx = context.current()
    consumed = set(sender.app.amqp.queues.consume_from or {}) if sender is not None else set()
    models = [m for m in ctx.engines.models if not consumed or queue_for(m) in consumed]
    if models:
        ctx.videos.ensure_bucket()
        # Load before consuming: the first job of the window must not wait for weights.
        for model in models:
            try:
                ctx.engines.get(model)
            except Exception:
                log.exception("model %s failed to load; its jobs will fail with model_unavailable", model)
    if not consumed or WEBHOOK_QUEUE in consumed:
        webhook_sender()  # a missing or malformed secret stops the process here, loudly
    _sweeper = Sweeper(ctx.store, app, ctx.settings.sweep_seconds, ctx.settings.max_attempts, videos=ctx.videos)
    _sweeper.start()
    slots = int(getattr(sender, "concurrency", 0) or ctx.settings.worker_slots)
    ctx.slots.capacity = slots  # preemption happens only when all of them are busy
    _heartbeat = Heartbeat(ctx.settings, ctx.node, models, slots, kind="gen" if models else "webhooks")
    _heartbeat.start()
    log.info("worker ready: models %s, webhooks %s", models or "none", not consumed or WEBHOOK_QUEUE in consumed)


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    # Celery stops taking messages and waits for the running jobs. They may finish within the grace period;
    # after it they stop at their next step and go back to the queue for another worker.
    ctx = context._current
    if ctx is None:
        return
    grace = ctx.settings.shutdown_grace_seconds
    if grace <= 0:
        ctx.shutting_down.set()
        return
    log.info("shutting down: running jobs have %.0fs to finish before they are handed back", grace)
    timer = threading.Timer(grace, ctx.shutting_down.set)
    timer.daemon = True
    timer.start()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
    if _heartbeat is not None:
        _heartbeat.stop()
    if context._current is not None:
        context._current.close()


def run_worker(queues: list[str], concurrency: int, name: str, loglevel: str = "INFO") -> None:
    """Start a Celery worker consuming `queues` with a pool of `concurrency` threads (blocks)."""
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--prefetch-multiplier",
            "1",
            "--hostname",
            f"{name}-{os.getpid()}@{socket.gethostname()}",
            "--loglevel",
            loglevel,
            # Gossip/mingle only slow the start down: workers share nothing but the broker and Postgres.
            "--without-gossip",
            "--without-mingle",
        ]
    )
