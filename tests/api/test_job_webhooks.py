"""Webhook URLs checked at submit (public addresses only, unless allow-listed; not disabled), and a job's
deliveries for its client: `GET /v1/jobs/{id}/webhooks` and `POST .../webhooks/{delivery_id}/redeliver`.

Deliveries are made by the real webhook sender to a real receiver on loopback, against the API tests' Postgres;
the redelivery's Celery message is read from the API tests' Redis.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from service_harness import WebhookReceiver

from api.app import create_app
from api.services import services
from vidserve.queue import WEBHOOK_QUEUE
from vidserve.settings import Settings
from vidserve.webhook_store import WebhookStore
from worker.webhooks import WebhookSender

MakeKey = Callable[..., Any]  # tests/api/conftest.py's make_key: (*scopes) -> Key(token, id, headers)


@pytest.fixture(scope="module")
def strict_app(api_settings: Settings) -> Flask:
    """The API with production's webhook rules: no allow-list."""
    return create_app(dataclasses.replace(api_settings, webhook_allowed_networks=""))


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()


def _submit(client: FlaskClient, url: str, **headers: str) -> Any:
    return client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "a cat", "webhook_url": url}, headers=headers)


@pytest.mark.parametrize(
    "url, rule",
    [
        ("http://127.0.0.1:8000/hook", "resolves to 127.0.0.1, which is not a public address"),
        ("http://10.0.0.5/hook", "resolves to 10.0.0.5, which is not a public address"),
        ("http://169.254.169.254/latest/meta-data/", "resolves to 169.254.169.254, which is not a public address"),
        ("http://100.64.0.1/hook", "resolves to 100.64.0.1, which is not a public address"),
        ("http://[::1]:8000/hook", "resolves to ::1, which is not a public address"),
        ("http://[::ffff:10.0.0.1]/hook", "resolves to ::ffff:a00:1, which is not a public address"),
        ("http://localhost:8000/hook", "resolves to 127.0.0.1, which is not a public address"),
        ("ftp://hooks.example.com/hook", "must be an absolute http(s) URL with a host name"),
        ("javascript:alert(1)", "must be an absolute http(s) URL with a host name"),
        ("https://user:pass@hooks.example.com/hook", "must not contain credentials (user:password@)"),
        ("https://nowhere.invalid/hook", "host 'nowhere.invalid' does not resolve"),
        ("http://93.184.215.14:0/hook", "must have a port between 1 and 65535"),
        ("http://[64:ff9b::a9fe:a9fe]/hook", "resolves to 64:ff9b::a9fe:a9fe, which is not a public address"),
    ],
)
def test_submit_refuses_a_webhook_url_that_is_not_public(strict_app: Flask, url: str, rule: str) -> None:
    response = _submit(strict_app.test_client(), url)

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["field"] == "webhook_url"
    assert error["rule"].startswith(rule), error["rule"]


def test_submit_accepts_a_public_name_and_the_allow_list_admits_loopback(
    strict_app: Flask, client: FlaskClient
) -> None:
    assert _submit(strict_app.test_client(), "https://hooks.example.com/hook").status_code == 202
    assert _submit(strict_app.test_client(), "http://[2606:4700::1111]:8443/hook").status_code == 202
    # The suite's app allows 127.0.0.0/8 and ::1 (VIDSERVE_WEBHOOK_ALLOWED_NETWORKS), where its receivers listen.
    assert _submit(client, "http://127.0.0.1:9/hook").status_code == 202
    assert _submit(client, "http://[::1]:9/hook").status_code == 202
    assert _submit(client, "http://10.0.0.5/hook").status_code == 422


def _job_with_delivery(app: Flask, client: FlaskClient, url: str, **headers: str) -> tuple[str, str]:
    """A job submitted through the API whose worker claims it: one `job.running` delivery to `url`."""
    response = _submit(client, url, **headers)
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    with app.app_context():
        assert services().jobs.claim(job_id, "test-worker", 60) is not None
    (found,) = client.get(f"/v1/jobs/{job_id}/webhooks", headers=headers).get_json()["data"]
    return job_id, found["id"]


def test_a_failed_delivery_is_visible_and_can_be_redelivered(
    app: Flask, client: FlaskClient, api_settings: Settings, receiver: WebhookReceiver, broker: Any
) -> None:
    receiver.fail_first["/down"] = 1
    job_id, delivery_id = _job_with_delivery(app, client, receiver.url("/down"))
    sender = WebhookSender(dataclasses.replace(api_settings, webhook_max_attempts=1))
    assert sender.deliver(delivery_id).status == "failed"

    (failed,) = client.get(f"/v1/jobs/{job_id}/webhooks").get_json()["data"]
    assert failed["id"] == delivery_id and failed["event_type"] == "job.running"
    assert (failed["status"], failed["last_status_code"], failed["last_error"]) == ("failed", 500, "HTTP 500")
    assert failed["next_attempt_at"] is None and failed["url"] == receiver.url("/down")
    assert [(a["attempt"], a["status_code"], a["error"]) for a in failed["attempts"]] == [(1, 500, "HTTP 500")]

    response = client.post(f"/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver")
    assert response.status_code == 202
    assert response.get_json()["status"] == "pending"
    assert broker.find(WEBHOOK_QUEUE, delivery_id) is not None  # the sender is asked to send it now
    again = client.post(f"/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "delivery_conflict"

    assert sender.deliver(delivery_id).status == "delivered"
    (delivered,) = client.get(f"/v1/jobs/{job_id}/webhooks").get_json()["data"]
    assert delivered["status"] == "delivered" and delivered["delivered_at"] is not None
    assert [(a["status_code"], a["error"]) for a in delivered["attempts"]] == [(500, "HTTP 500"), (200, None)]
    sent = receiver.at("/down")
    assert len(sent) == 2 and sent[0].body == sent[1].body
    assert sent[0].headers["webhook-id"] == sent[1].headers["webhook-id"] == delivery_id


def test_deliveries_of_unknown_jobs_and_ids_are_404(app: Flask, client: FlaskClient, receiver: WebhookReceiver) -> None:
    job_id, delivery_id = _job_with_delivery(app, client, receiver.url("/x"))
    other_job, _ = _job_with_delivery(app, client, receiver.url("/y"))

    assert client.get(f"/v1/jobs/{uuid.uuid4()}/webhooks").status_code == 404
    assert client.post(f"/v1/jobs/{other_job}/webhooks/{delivery_id}/redeliver").status_code == 404
    missing = client.post(f"/v1/jobs/{job_id}/webhooks/{uuid.uuid4()}/redeliver")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "delivery_not_found"
    assert client.post(f"/v1/jobs/{job_id}/webhooks/not-an-id/redeliver").status_code == 404


def test_a_job_without_deliveries_lists_none(client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "a cat"}).get_json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/webhooks").get_json() == {"data": []}


def test_another_keys_job_deliveries_are_404(
    auth_app: Flask, auth_client: FlaskClient, make_key: MakeKey, receiver: WebhookReceiver
) -> None:
    owner, stranger = make_key(), make_key()
    job_id, delivery_id = _job_with_delivery(auth_app, auth_client, receiver.url("/own"), **owner.headers)

    assert auth_client.get(f"/v1/jobs/{job_id}/webhooks").status_code == 401
    assert auth_client.get(f"/v1/jobs/{job_id}/webhooks", headers=stranger.headers).status_code == 404
    redeliver = f"/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver"
    assert auth_client.post(redeliver, headers=stranger.headers).status_code == 404
    reader = make_key("jobs:read")
    assert auth_client.post(redeliver, headers=reader.headers).status_code == 403


def test_a_disabled_url_is_refused_at_submit_and_for_redelivery(
    app: Flask, client: FlaskClient, api_settings: Settings, receiver: WebhookReceiver
) -> None:
    url = receiver.url("/gone")
    receiver.answers["/gone"] = [(410, {})]
    job_id, delivery_id = _job_with_delivery(app, client, url)
    assert WebhookSender(api_settings).deliver(delivery_id).status == "disabled"

    refused = _submit(client, url)
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert error["field"] == "webhook_url" and error["rule"].startswith("is disabled (HTTP 410 Gone at ")
    conflict = client.post(f"/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver")
    assert conflict.status_code == 409 and "disabled" in conflict.get_json()["error"]["message"]

    assert WebhookStore(api_settings.database_url).enable(url)
    assert _submit(client, url).status_code == 202
    assert client.post(f"/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver").status_code == 202
