"""Webhook delivery: Standard Webhooks signatures, retried with exponential backoff, every attempt recorded.

The body (`{type, timestamp, data}`) was fixed when the event happened, so every retry sends the same bytes
under the same `webhook-id` (the delivery id) and receivers can deduplicate. Each attempt is claimed with a
conditional UPDATE first, so a duplicate message (the sweeper's re-publish) never sends twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests
from sqlalchemy import or_, select, update
from standardwebhooks import Webhook

from vidserve.db import session_factory
from vidserve.queue import publish_delivery
from vidserve.schema import DeliveryStatus, WebhookAttempt, WebhookDelivery
from vidserve.settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "vidserve-webhooks/1"
# A claimed attempt is "in flight" this long past its HTTP timeout; after that the sweeper may resend it.
IN_FLIGHT_SLACK = dt.timedelta(seconds=30)
# A retry message may arrive a hair before its scheduled time (clocks of two hosts); one that comes earlier
# is a duplicate and sends nothing; a lost one is re-published by the sweeper.
EARLY_TOLERANCE = dt.timedelta(milliseconds=100)


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


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Wait before the attempt after the `attempts`-th failure: backoff, 2x backoff, 4x backoff ..."""
    return settings.webhook_backoff * 2 ** (attempts - 1)


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | retrying | failed | skipped
    attempt: int = 0
    status_code: int | None = None
    retry_in: float | None = None


class WebhookSender:
    def __init__(self, settings: Settings, schedule: Any = None) -> None:
        """`schedule(delivery_id, countdown)` queues the next attempt (default: a Celery message)."""
        if not settings.webhook_secret:
            raise ValueError("VIDSERVE_WEBHOOK_SECRET is not set; webhooks cannot be signed")
        Webhook(settings.webhook_secret)  # fail at start on a malformed secret, not on the first event
        self.settings = settings
        self._sessions = session_factory(settings.database_url)
        self._schedule = schedule
        # One HTTP session (connection pool) per delivery thread: requests.Session is not thread-safe.
        self._local = threading.local()

    def deliver(self, delivery_id: str | uuid.UUID) -> Outcome:
        """Make one attempt if the delivery is pending and due; record it; schedule the next on failure."""
        claimed = self._claim(uuid.UUID(str(delivery_id)))
        if claimed is None:
            return Outcome("skipped")
        delivery_id, url, payload, attempt = claimed
        body = encode_body(payload)
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        headers |= sign(self.settings.webhook_secret, str(delivery_id), body)

        status_code: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            response = self._session().post(
                url, data=body.encode(), headers=headers, timeout=self.settings.webhook_timeout, allow_redirects=False
            )
            status_code = response.status_code
            response.close()
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
        duration_ms = (time.perf_counter() - started) * 1000
        return self._record(delivery_id, attempt, status_code, error, duration_ms)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _claim(self, delivery_id: uuid.UUID) -> tuple[uuid.UUID, str, dict[str, Any], int] | None:
        now = _now()
        in_flight_until = now + dt.timedelta(seconds=self.settings.webhook_timeout) + IN_FLIGHT_SLACK
        with self._sessions() as s, s.begin():
            row = s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == DeliveryStatus.PENDING,
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
                # A delivery whose attempts ran out while pending (a crash between send and record) ends here.
                s.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery_id,
                        WebhookDelivery.status == DeliveryStatus.PENDING,
                        WebhookDelivery.attempts >= self.settings.webhook_max_attempts,
                    )
                    .values(status=DeliveryStatus.FAILED, next_attempt_at=None)
                )
                return None
        return row[0], row[1], row[2], row[3]

    def _record(
        self, delivery_id: uuid.UUID, attempt: int, status_code: int | None, error: str | None, duration_ms: float
    ) -> Outcome:
        now = _now()
        values: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
        retry_in: float | None = None
        if error is None:
            values |= {"status": DeliveryStatus.DELIVERED, "delivered_at": now, "next_attempt_at": None}
            status = "delivered"
        elif attempt >= self.settings.webhook_max_attempts:
            values |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
            status = "failed"
        else:
            retry_in = backoff_seconds(self.settings, attempt)
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
        log.info("webhook %s attempt %d: %s (%s)", delivery_id, attempt, status, error or status_code)
        if retry_in is not None and self._schedule is not None:
            try:
                self._schedule(delivery_id, retry_in)
            except Exception:
                log.warning("could not schedule webhook retry %s; the sweeper will", delivery_id, exc_info=True)
        return Outcome(status, attempt, status_code, retry_in)

    def attempts(self, delivery_id: str | uuid.UUID) -> list[WebhookAttempt]:
        with self._sessions() as s:
            q = select(WebhookAttempt).where(WebhookAttempt.delivery_id == uuid.UUID(str(delivery_id)))
            return list(s.scalars(q.order_by(WebhookAttempt.attempt)))


def celery_scheduler(app: Any) -> Any:
    """`schedule` that queues the next attempt as a delayed message on the webhooks queue."""

    def schedule(delivery_id: uuid.UUID, countdown: float) -> None:
        publish_delivery(app, delivery_id, countdown=countdown)

    return schedule
