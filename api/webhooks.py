"""A job's webhook deliveries for its client: every attempt with its status code or error, and redelivery
(`/v1/jobs/{id}/webhooks...`); and the submit-time check of a job's `webhook_url` destination.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from api.auth import principal, requires
from api.errors import DeliveryConflict, DeliveryNotFound, InvalidField
from api.services import services
from vidserve.queue import announce_delivery
from vidserve.schema import DeliveryStatus, Job
from vidserve.webhook_store import DeliveryPending, DeliveryRecord, WebhookStore
from vidserve.webhook_urls import UnsafeWebhookURL, check_url, parse_networks

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/v1/jobs")


def check_webhook_target(url: str) -> None:
    """At submit: the URL's host resolves to allowed addresses only, and the URL is not disabled (422 if so)."""
    settings = services().settings
    try:
        check_url(url, parse_networks(settings.webhook_allowed_networks))
    except UnsafeWebhookURL as exc:
        raise InvalidField("webhook_url", str(exc)) from None
    endpoint = WebhookStore(settings.database_url).disabled(url)
    if endpoint is not None:
        raise InvalidField("webhook_url", f"is disabled ({endpoint.reason}); an operator can enable it again")


@bp.get("/<job_id>/webhooks")
@requires("jobs:read")
def list_deliveries(job_id: str) -> Response:
    job = _job(job_id)
    records = WebhookStore(services().settings.database_url).deliveries(job.id)
    return jsonify(data=[delivery_to_dict(r) for r in records])


@bp.post("/<job_id>/webhooks/<delivery_id>/redeliver")
@requires("jobs:write")
def redeliver(job_id: str, delivery_id: str) -> tuple[Response, int]:
    svc = services()
    job = _job(job_id)
    store = WebhookStore(svc.settings.database_url)
    record = _delivery(store, job, delivery_id)
    endpoint = store.disabled(record.delivery.url)
    if endpoint is not None:
        raise DeliveryConflict(f"the webhook URL is disabled ({endpoint.reason}); an operator can enable it again")
    try:
        store.redeliver(record.delivery.id, job.id)
    except DeliveryPending:
        raise DeliveryConflict("the delivery is pending: its next attempt is scheduled already") from None
    announce_delivery(svc.celery, record.delivery.id)  # a lost message: the sweeper re-publishes the pending row
    return jsonify(delivery_to_dict(_delivery(store, job, delivery_id))), 202


def delivery_to_dict(record: DeliveryRecord) -> dict[str, Any]:
    d = record.delivery
    return {
        "id": str(d.id),
        "event_type": d.event_type,
        "url": d.url,
        "status": d.status.value,
        "created_at": _iso(d.created_at),
        "delivered_at": _iso(d.delivered_at),
        "next_attempt_at": _iso(d.next_attempt_at) if d.status == DeliveryStatus.PENDING else None,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "attempts": [
            {"attempt": a.attempt, "at": _iso(a.at), "status_code": a.status_code, "error": a.error}
            for a in record.attempts
        ],
    }


def _job(job_id: str) -> Job:
    """The job, as the job endpoints read it: another key's job is a 404, as if it did not exist."""
    return services().jobs.get(job_id, owner=principal().job_owner)


def _delivery(store: WebhookStore, job: Job, delivery_id: str) -> DeliveryRecord:
    for record in store.deliveries(job.id):
        if str(record.delivery.id) == delivery_id.lower():
            return record
    raise DeliveryNotFound(f"job {job.id} has no webhook delivery {delivery_id}")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None
