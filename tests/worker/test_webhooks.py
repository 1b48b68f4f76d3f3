"""Webhook delivery: Standard Webhooks signatures and retry schedule, every attempt recorded, no double send.

The sender runs in the test process against real Postgres and a real HTTP receiver; the retry that Celery
would carry as a delayed message is captured and replayed when it falls due.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from service_harness import ManualClock, WebhookReceiver, free_port
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from vidserve.db import session_factory
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.schema import DeliveryStatus, WebhookDelivery
from vidserve.settings import Settings
from worker.webhooks import WebhookSender


class Scheduled:
    """Collects (delivery id, countdown) pairs, like the delayed Celery messages would carry."""

    def __init__(self) -> None:
        self.calls: list[tuple[uuid.UUID, float]] = []

    def __call__(self, delivery_id: uuid.UUID, countdown: float) -> None:
        self.calls.append((delivery_id, countdown))


def make_delivery(settings: Settings, url: str) -> uuid.UUID:
    """A job that moves to running, which records a `job.running` delivery for its webhook URL."""
    store = JobStore(settings.database_url, lambda job: job_to_dict(job, None))
    job = store.create(model="tiny-wan", params={"prompt": "a cat"}, webhook_url=url)
    assert store.claim(job.id, "test-owner", 60) is not None
    with session_factory(settings.database_url)() as s:
        query = select(WebhookDelivery.id).where(
            WebhookDelivery.job_id == job.id, WebhookDelivery.event_type == "job.running"
        )
        return s.scalars(query).one()


def delivery(settings: Settings, delivery_id: uuid.UUID) -> WebhookDelivery:
    with session_factory(settings.database_url)() as s:
        return s.get(WebhookDelivery, delivery_id)


def test_delivery_is_signed_per_standard_webhooks(settings: Settings, receiver: WebhookReceiver) -> None:
    delivery_id = make_delivery(settings, receiver.url("/signed"))
    outcome = WebhookSender(settings).deliver(delivery_id)
    assert outcome.status == "delivered" and outcome.status_code == 200

    (hook,) = receiver.at("/signed")
    body = Webhook(settings.webhook_secret).verify(hook.body, hook.headers)
    assert body["type"] == "job.running"
    assert set(body) == {"type", "timestamp", "data"}
    assert body["data"]["status"] == "running"
    assert hook.headers["webhook-id"] == str(delivery_id)
    assert hook.headers["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError):
        Webhook(settings.webhook_secret).verify(hook.body.replace(b"running", b"succeeded"), hook.headers)
    other_secret = "whsec_" + "A" * 32
    with pytest.raises(WebhookVerificationError):
        Webhook(other_secret).verify(hook.body, hook.headers)


def test_failed_delivery_is_retried_on_the_schedule_until_accepted(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    unscaled = dataclasses.replace(settings, webhook_retry_scale=1.0)  # 5 s, then 5 min: on the test's clock
    receiver.fail_first["/flaky"] = 2
    delivery_id = make_delivery(unscaled, receiver.url("/flaky"))
    scheduled = Scheduled()
    clock = ManualClock()
    sender = WebhookSender(unscaled, scheduled, clock)

    first = sender.deliver(delivery_id)
    assert (first.status, first.status_code) == ("retrying", 500)
    assert 5 * 0.8 <= first.retry_in <= 5 * 1.2
    assert sender.deliver(delivery_id).status == "skipped"  # not due yet
    clock.advance(first.retry_in)
    second = sender.deliver(delivery_id)
    assert second.status == "retrying" and 300 * 0.8 <= second.retry_in <= 300 * 1.2
    clock.advance(second.retry_in - 1.0)
    assert sender.deliver(delivery_id).status == "skipped"  # a second early
    clock.advance(1.0)
    third = sender.deliver(delivery_id)
    assert third.status == "delivered"
    assert sender.deliver(delivery_id).status == "skipped"  # delivered stays delivered

    assert scheduled.calls == [(delivery_id, first.retry_in), (delivery_id, second.retry_in)]
    attempts = sender.attempts(delivery_id)
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [
        (1, 500, "HTTP 500"),
        (2, 500, "HTTP 500"),
        (3, 200, None),
    ]
    assert all(a.duration_ms is not None for a in attempts)
    row = delivery(settings, delivery_id)
    assert row.status == DeliveryStatus.DELIVERED and row.attempts == 3 and row.delivered_at is not None
    hooks = receiver.at("/flaky")
    assert len({h.body for h in hooks}) == 1 and len({h.headers["webhook-id"] for h in hooks}) == 1
    assert [h.status for h in hooks] == [500, 500, 200]


def test_delivery_gives_up_after_the_last_attempt(settings: Settings, receiver: WebhookReceiver) -> None:
    limited = dataclasses.replace(settings, webhook_max_attempts=2, webhook_retry_scale=0.05)
    receiver.fail_first["/down"] = 100
    delivery_id = make_delivery(limited, receiver.url("/down"))
    scheduled = Scheduled()
    clock = ManualClock()
    sender = WebhookSender(limited, scheduled, clock)

    assert sender.deliver(delivery_id).status == "retrying"  # the retry waits 5 s x 0.05, ±20%
    # The retry is not due yet: an early or duplicate message sends nothing.
    assert sender.deliver(delivery_id).status == "skipped"
    clock.advance(5 * 0.05 * 1.2)
    last = sender.deliver(delivery_id)
    assert last.status == "failed" and last.retry_in is None
    assert len(scheduled.calls) == 1
    row = delivery(limited, delivery_id)
    assert row.status == DeliveryStatus.FAILED and row.attempts == 2 and row.last_status_code == 500
    assert sender.deliver(delivery_id).status == "skipped"


def test_unreachable_receiver_is_recorded_as_an_error(settings: Settings) -> None:
    delivery_id = make_delivery(settings, f"http://127.0.0.1:{free_port()}/nobody")
    sender = WebhookSender(settings)
    outcome = sender.deliver(delivery_id)
    assert outcome.status == "retrying" and outcome.status_code is None
    (attempt,) = sender.attempts(delivery_id)
    assert attempt.status_code is None and "ConnectionError" in attempt.error


def test_sender_refuses_to_start_without_a_secret(settings: Settings) -> None:
    with pytest.raises(ValueError, match="VIDSERVE_WEBHOOK_SECRET"):
        WebhookSender(dataclasses.replace(settings, webhook_secret=""))
