"""Webhook delivery: Standard Webhooks signatures and retry schedule, checked destinations, every attempt recorded.

The body (`{type, timestamp, data}`) was fixed when the event happened, so every retry sends the same event
under the same `webhook-id` (the delivery id) and receivers can deduplicate. One part is made at each attempt:
a succeeded job's `output.url` and `output.expires_at` are presigned again, so a retry a day later still carries a
working link (a presigned URL lives `VIDSERVE_URL_TTL_SECONDS`, the retries about 28 hours). Each attempt is
claimed with a conditional UPDATE first, so a duplicate message (the sweeper's re-publish) never sends twice.

Before every attempt the URL's host is resolved once and every address checked (vidserve.webhook_urls); the
request then goes to exactly the checked address, and redirects are never followed. Failed attempts are
retried on the Standard Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the first, each
±20% so that many failed deliveries do not retry in step), times `VIDSERVE_WEBHOOK_RETRY_SCALE`; a 429 or 503
with `Retry-After` waits what the receiver asked (at most 10 h) instead. A 410 Gone disables the URL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from sqlalchemy import exists, func, or_, select, update
from standardwebhooks import Webhook
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from vidserve.db import session_factory
from vidserve.queue import announce_delivery
from vidserve.schema import DeliveryStatus, Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from vidserve.webhook_store import disable_endpoint
from vidserve.webhook_urls import UnsafeWebhookURL, check_url, parse_networks
from worker.pinned_http import pinned_session

log = logging.getLogger(__name__)

USER_AGENT = "vidserve-webhooks/1"
# A claimed attempt is "in flight" this long past its HTTP timeout; after that the sweeper may resend it.
IN_FLIGHT_SLACK = dt.timedelta(seconds=30)
# A retry message may arrive a hair before its scheduled time (clocks of two hosts); one that comes earlier
# is a duplicate and sends nothing; a lost one is re-published by the sweeper.
EARLY_TOLERANCE = dt.timedelta(milliseconds=100)
# Seconds before each attempt (Standard Webhooks): the first at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
# 10 h; attempts beyond the schedule wait its last step.
SCHEDULE = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
JITTER = 0.2
RETRY_AFTER_STATUSES = frozenset({429, 503})
RETRY_AFTER_MAX = 10 * 3600
GONE = 410


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def encode_body(payload: dict[str, Any]) -> str:
    """The exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def sign(secret: str, msg_id: str, body: str, at: dt.datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one send of `body`."""
    at = at or _now()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def retry_delay(settings: Settings, attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: the schedule's next step, scaled, ±JITTER."""
    step = SCHEDULE[min(attempts, len(SCHEDULE) - 1)] * settings.webhook_retry_scale
    return step * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def retry_after(response: requests.Response) -> float | None:
    """The receiver's `Retry-After` (seconds or an HTTP date) on a 429 or 503, capped at RETRY_AFTER_MAX."""
    value = response.headers.get("retry-after")
    if response.status_code not in RETRY_AFTER_STATUSES or value is None:
        return None
    try:
        return Retry(retry_after_max=RETRY_AFTER_MAX).parse_retry_after(value)
    except InvalidHeader:
        return None


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | retrying | failed | disabled (410 Gone) | skipped
    attempt: int = 0
    status_code: int | None = None
    retry_in: float | None = None


class WebhookSender:
    def __init__(self, settings: Settings, schedule: Any = None, clock: Callable[[], dt.datetime] = _now) -> None:
        """`schedule(delivery_id, countdown)` queues the next attempt (default: a Celery message). `clock` says
        when an attempt is due and when the next one will be (tests advance their own instead of sleeping)."""
        if not settings.webhook_secret:
            raise ValueError("VIDSERVE_WEBHOOK_SECRET is not set; webhooks cannot be signed")
        Webhook(settings.webhook_secret)  # fail at start on a malformed secret, not on the first event
        self.settings = settings
        self._allowed = parse_networks(settings.webhook_allowed_networks)
        self._sessions = session_factory(settings.database_url)
        self._schedule = schedule
        self._clock = clock
        self._videos = VideoStore(settings) if settings.s3_endpoint else None

    def deliver(self, delivery_id: str | uuid.UUID) -> Outcome:
        """Make one attempt if the delivery is pending and due; record it; schedule the next on failure."""
        claimed = self._claim(uuid.UUID(str(delivery_id)))
        if claimed is None:
            return Outcome("skipped")
        delivery_id, url, payload, attempt = claimed
        body = encode_body(self._with_fresh_link(payload))
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        headers |= sign(self.settings.webhook_secret, str(delivery_id), body)

        status_code: int | None = None
        error: str | None = None
        wait: float | None = None
        started = time.perf_counter()
        try:
            target = check_url(url, self._allowed)
            with pinned_session(target) as session:
                response = session.post(
                    url,
                    data=body.encode(),
                    headers=headers,
                    timeout=self.settings.webhook_timeout,
                    allow_redirects=False,
                )
            status_code = response.status_code
            wait = retry_after(response)
            response.close()
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except UnsafeWebhookURL as exc:
            error = f"refused: webhook_url {exc}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
        duration_ms = (time.perf_counter() - started) * 1000
        return self._record(delivery_id, url, attempt, status_code, error, duration_ms, wait)

    def _with_fresh_link(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload with its video link presigned now (the stored one may have expired); as stored otherwise."""
        data = payload.get("data") or {}
        output = data.get("output")
        if not isinstance(output, dict) or not output.get("url") or self._videos is None:
            return payload
        with self._sessions() as s:
            stored = s.scalar(select(Job.output).where(Job.id == uuid.UUID(str(data.get("id")))))
        if not stored or not stored.get("key"):
            return payload  # the job was deleted since: nothing to link to, send the event as it was
        url, expires_at = self._videos.presigned_url(stored["key"])
        fresh = {**output, "url": url, "expires_at": expires_at.isoformat()}
        return {**payload, "data": {**data, "output": fresh}}

    def _claim(self, delivery_id: uuid.UUID) -> tuple[uuid.UUID, str, dict[str, Any], int] | None:
        now = self._clock()
        in_flight_until = now + dt.timedelta(seconds=self.settings.webhook_timeout) + IN_FLIGHT_SLACK
        pending = [WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING]
        disabled = exists().where(WebhookEndpoint.url == WebhookDelivery.url)
        with self._sessions() as s, s.begin():
            row = s.execute(
                update(WebhookDelivery)
                .where(
                    *pending,
                    ~disabled,
                    WebhookDelivery.attempts < self.settings.webhook_max_attempts,
                    or_(
                        WebhookDelivery.next_attempt_at.is_(None),
                        WebhookDelivery.next_attempt_at <= now + EARLY_TOLERANCE,
                    ),
                )
                .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=in_flight_until)
                .returning(WebhookDelivery.id, WebhookDelivery.url, WebhookDelivery.payload, WebhookDelivery.attempts)
            ).first()
            if row is None:
                # A delivery to a disabled URL (an event after its 410, or a redelivery) ends here unsent.
                s.execute(
                    update(WebhookDelivery)
                    .where(*pending, WebhookEndpoint.url == WebhookDelivery.url)
                    .values(
                        status=DeliveryStatus.FAILED,
                        next_attempt_at=None,
                        last_error=func.concat("webhook URL disabled: ", WebhookEndpoint.reason),
                    )
                )
                # A delivery whose attempts ran out while pending (a crash between send and record) ends here.
                s.execute(
                    update(WebhookDelivery)
                    .where(*pending, WebhookDelivery.attempts >= self.settings.webhook_max_attempts)
                    .values(status=DeliveryStatus.FAILED, next_attempt_at=None)
                )
                return None
        return row[0], row[1], row[2], row[3]

    def _record(
        self,
        delivery_id: uuid.UUID,
        url: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        wait: float | None,
    ) -> Outcome:
        now = self._clock()
        values: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
        retry_in: float | None = None
        if error is None:
            values |= {"status": DeliveryStatus.DELIVERED, "delivered_at": now, "next_attempt_at": None}
            status = "delivered"
        elif status_code == GONE:
            values |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
            status = "disabled"
        elif attempt >= self.settings.webhook_max_attempts:
            values |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
            status = "failed"
        else:
            retry_in = wait if wait is not None else retry_delay(self.settings, attempt)
            values["next_attempt_at"] = now + dt.timedelta(seconds=retry_in)
            status = "retrying"
        with self._sessions() as s, s.begin():
            s.add(
                WebhookAttempt(
                    delivery_id=delivery_id,
                    attempt=attempt,
                    status_code=status_code,
                    error=error,
                    duration_ms=round(duration_ms, 2),
                )
            )
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))
            if status == "disabled":
                ended = disable_endpoint(s, url, f"HTTP 410 Gone at {now.isoformat(timespec='seconds')}")
                log.warning("webhook URL %s answered 410 Gone: disabled, %d pending deliveries failed", url, len(ended))
        log.info("webhook %s attempt %d: %s (%s)", delivery_id, attempt, status, error or status_code)
        if retry_in is not None and self._schedule is not None:
            self._schedule(delivery_id, retry_in)
        return Outcome(status, attempt, status_code, retry_in)

    def attempts(self, delivery_id: str | uuid.UUID) -> list[WebhookAttempt]:
        with self._sessions() as s:
            q = select(WebhookAttempt).where(WebhookAttempt.delivery_id == uuid.UUID(str(delivery_id)))
            return list(s.scalars(q.order_by(WebhookAttempt.attempt)))


def celery_scheduler(app: Any) -> Any:
    """`schedule` that queues the next attempt as a delayed message on the webhooks queue."""

    def schedule(delivery_id: uuid.UUID, countdown: float) -> None:
        announce_delivery(app, delivery_id, countdown=countdown)

    return schedule
