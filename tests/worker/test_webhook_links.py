"""A succeeded job's webhook carries a working video link at every attempt, also after the first link expired.

Real Postgres, S3 server and HTTP receiver; presigned URLs live one second here.
"""

from __future__ import annotations

import dataclasses

import requests
from service_harness import WebhookReceiver, wait_until
from sqlalchemy import select

from vidserve.db import session_factory
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.schema import WebhookDelivery
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from worker.webhooks import WebhookSender

VIDEO = b"\x00\x00\x00\x18ftypmp42 not really a video"


def test_a_retry_after_the_links_lifetime_still_carries_a_working_link(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    settings = dataclasses.replace(settings, url_ttl_seconds=1)
    videos = VideoStore(settings)
    videos.ensure_bucket()
    store = JobStore(settings.database_url, lambda job: job_to_dict(job, videos.presigned_url))
    hook = receiver.url("/late")
    job = store.create(model="tiny-wan", params={"prompt": "a cat"}, webhook_url=hook, webhook_events=["job.succeeded"])
    key = VideoStore.key_for(str(job.id))
    videos.put(key, VIDEO, "video/mp4")
    assert store.claim(job.id, "worker/1", 60) is not None
    assert store.succeed(job.id, "worker/1", {"key": key, "content_type": "video/mp4", "bytes": len(VIDEO)}, None)
    with session_factory(settings.database_url)() as s:
        delivery_id = s.scalars(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job.id)).one()

    receiver.fail_first["/late"] = 1
    sender = WebhookSender(settings)
    assert sender.deliver(delivery_id).status == "retrying"
    first_link = receiver.at("/late")[0].json["data"]["output"]["url"]
    wait_until(lambda: requests.get(first_link, timeout=5).status_code == 403, 30, what="the first link to expire")

    assert sender.deliver(delivery_id).status == "delivered"
    retried = receiver.at("/late")[1].json
    assert retried["data"]["id"] == str(job.id) and retried["type"] == "job.succeeded"
    fetched = requests.get(retried["data"]["output"]["url"], timeout=5)
    assert fetched.status_code == 200 and fetched.content == VIDEO
