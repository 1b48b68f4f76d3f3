"""The admin retry keeps the job's owner: the owner's key reads the retried job, another key gets 404, and the
new job keeps the webhook URL, events and priority; its timeline names the job it retries and the admin
credential that asked. Authentication on, over the app's HTTP interface, real Postgres and Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask.testing import FlaskClient

from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.keys import KeyStore
from vidserve.settings import Settings

HOOK = "https://hooks.example.com/video"


def test_an_admin_retry_belongs_to_the_owner_and_says_whose_retry_it_is(
    auth_client: FlaskClient, make_key: Callable[..., Any], api_settings: Settings
) -> None:
    owner, other, admin = make_key(), make_key(), make_key("admin")
    submitted = auth_client.post(
        "/v1/jobs",
        json={"prompt": "a red kite", "webhook_url": HOOK, "webhook_events": ["job.succeeded"]},
        headers=owner.headers,
    )
    assert submitted.status_code == 202, submitted.get_json()
    old_id = submitted.get_json()["id"]
    store = JobStore(api_settings.database_url, lambda job: job_to_dict(job, None))
    assert store.fail(old_id, "engine_error", "out of memory") is not None

    retried = auth_client.post(f"/admin/jobs/{old_id}/retry", headers=admin.headers)
    assert retried.status_code == 302
    new_id = urlsplit(retried.headers["Location"]).path.rsplit("/", 1)[-1]
    assert new_id != old_id

    mine = auth_client.get(f"/v1/jobs/{new_id}", headers=owner.headers)
    assert mine.status_code == 200
    job = mine.get_json()
    assert job["status"] == "queued" and job["params"] == submitted.get_json()["params"]
    assert job["webhook_url"] == HOOK and job["webhook_events"] == ["job.succeeded"]
    assert auth_client.get(f"/v1/jobs/{new_id}", headers=other.headers).status_code == 404
    assert new_id in [j["id"] for j in auth_client.get("/v1/jobs", headers=owner.headers).get_json()["data"]]

    (queued,) = store.events(new_id)
    assert queued.type == "job.queued"
    admin_name = next(key.name for key in KeyStore(api_settings.database_url).list() if key.id == admin.id)
    assert queued.detail == {"retry_of": old_id, "retried_by": f"admin key {admin.id} ({admin_name})"}
