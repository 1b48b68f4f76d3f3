"""Webhook deliveries as clients and operators see them, redelivery, and webhook URLs disabled after 410 Gone.

The webhook sender (worker/webhooks.py) makes the attempts; this module reads them, makes a finished delivery
pending again, and keeps the `webhook_endpoints` table: a URL there receives nothing until it is enabled.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from vidserve.db import session_factory
from vidserve.schema import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint


class DeliveryPending(Exception):
    """The delivery is still pending: its next attempt is scheduled already."""


@dataclass(frozen=True)
class DeliveryRecord:
    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


def disable_endpoint(s: Session, url: str, reason: str) -> list[uuid.UUID]:
    """Disable `url` (inside the caller's transaction) and fail its pending deliveries; their ids."""
    s.execute(insert(WebhookEndpoint).values(url=url, reason=reason).on_conflict_do_nothing())
    return list(
        s.scalars(
            update(WebhookDelivery)
            .where(WebhookDelivery.url == url, WebhookDelivery.status == DeliveryStatus.PENDING)
            .values(status=DeliveryStatus.FAILED, next_attempt_at=None, last_error=f"webhook URL disabled: {reason}")
            .returning(WebhookDelivery.id)
        )
    )


class WebhookStore:
    def __init__(self, database_url: str) -> None:
        self._sessions = session_factory(database_url)

    def deliveries(self, job_id: uuid.UUID) -> list[DeliveryRecord]:
        """The job's deliveries, oldest first, each with its attempts in order."""
        with self._sessions() as s:
            rows = list(
                s.scalars(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.job_id == job_id)
                    .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
                )
            )
            attempts: dict[uuid.UUID, list[WebhookAttempt]] = {row.id: [] for row in rows}
            query = select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(attempts)))
            for attempt in s.scalars(query.order_by(WebhookAttempt.id)):
                attempts[attempt.delivery_id].append(attempt)
        return [DeliveryRecord(row, attempts[row.id]) for row in rows]

    def redeliver(self, delivery_id: uuid.UUID, job_id: uuid.UUID | None = None, force: bool = False) -> bool:
        """Make a delivered or failed delivery pending with a fresh attempt budget; False when there is none
        (of `job_id`, when given). A pending one raises DeliveryPending unless `force` (the operator's reset)."""
        query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
        if job_id is not None:
            query = query.where(WebhookDelivery.job_id == job_id)
        with self._sessions() as s, s.begin():
            row = s.scalars(query).first()
            if row is None:
                return False
            if row.status == DeliveryStatus.PENDING and not force:
                raise DeliveryPending(str(delivery_id))
            row.status, row.attempts, row.next_attempt_at, row.delivered_at = DeliveryStatus.PENDING, 0, None, None
        return True

    def disabled(self, url: str) -> WebhookEndpoint | None:
        with self._sessions() as s:
            return s.get(WebhookEndpoint, url)

    def disabled_endpoints(self) -> list[WebhookEndpoint]:
        with self._sessions() as s:
            return list(s.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.disabled_at)))

    def enable(self, url: str) -> bool:
        """Send to `url` again (new events; failed deliveries can be redelivered); False when it was not disabled."""
        with self._sessions() as s, s.begin():
            return s.execute(delete(WebhookEndpoint).where(WebhookEndpoint.url == url)).rowcount > 0
