"""POST /v1/jobs/{id}/cancel: a queued job is canceled at once, a running one is flagged for its worker.

A job that has finished answers 409; the canceled transition announces `job.canceled` to a webhook.
"""

from __future__ import annotations

import uuid

from flask.testing import FlaskClient
from sqlalchemy import select

from vidserve.db import session_factory
from vidserve.jobs import JobStore
from vidserve.schema import WebhookDelivery
from vidserve.settings import Settings


def test_cancel_of_a_queued_job_cancels_it_at_once(client: FlaskClient, submit) -> None:
    job = submit()

    response = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 202
    canceled = response.get_json()
    assert canceled["status"] == "canceled"
    assert canceled["finished_at"] is not None
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "canceled"


def test_a_second_cancel_is_a_409_conflict(client: FlaskClient, submit) -> None:
    job = submit()
    client.post(f"/v1/jobs/{job['id']}/cancel")

    response = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "job_conflict"


def test_cancel_of_a_running_job_flags_it_for_the_worker(client: FlaskClient, submit, api_settings: Settings) -> None:
    store = JobStore(api_settings.database_url, view=dict)
    job = submit()
    store.claim(job["id"], "test-worker", 60)

    response = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 202
    assert response.get_json()["status"] == "running"
    assert store.get(job["id"]).cancel_requested is True
    # The worker sees the flag at its next step and finishes the cancellation.
    assert store.set_progress(job["id"], "test-worker", 0.5) is True


def test_cancel_of_a_succeeded_job_is_a_409_conflict(client: FlaskClient, submit, api_settings: Settings) -> None:
    store = JobStore(api_settings.database_url, view=dict)
    job = submit()
    store.claim(job["id"], "test-worker", 60)
    store.succeed(job["id"], "test-worker", {"key": "videos/x.mp4"}, None)

    response = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 409
    assert store.get(job["id"]).status.value == "succeeded"


def test_cancel_of_an_unknown_job_is_a_404(client: FlaskClient) -> None:
    response = client.post(f"/v1/jobs/{uuid.uuid4()}/cancel")

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "job_not_found"


def test_cancel_of_a_job_with_a_webhook_publishes_a_job_canceled_delivery(
    client: FlaskClient, submit, broker, api_settings: Settings
) -> None:
    job = submit(webhook_url="http://127.0.0.1:9/hook")

    client.post(f"/v1/jobs/{job['id']}/cancel")

    with session_factory(api_settings.database_url)() as s:
        [delivery] = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == uuid.UUID(job["id"])))
    assert delivery.event_type == "job.canceled"
    message = broker.find("webhooks", str(delivery.id))
    assert message == {"task": "worker.tasks.deliver_webhook", "args": [str(delivery.id)]}
