"""Promise: a worker SIGKILLed mid-batch loses nothing. Its jobs' leases expire, a restarted worker's sweeper
queues them again, each finishes once: one `job.succeeded` event, one webhook, its video in the bucket."""

from __future__ import annotations

import signal

from conftest import (
    GATED_MODEL,
    Services,
    event_types,
    gated_settings,
    start_worker,
    submit,
    wait_held,
    wait_terminal,
)
from service_harness import WebhookReceiver, start_celery_service
from sqlalchemy import select
from standardwebhooks import Webhook

from vidserve.db import session_factory
from vidserve.schema import DeliveryStatus, WebhookDelivery
from vidserve.tools.processes import ManagedProcess

STEPS = 8


def test_jobs_of_a_killed_worker_finish_once_on_its_successor(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    receiver = WebhookReceiver.start()
    try:
        processes.append(start_celery_service("webhooks", faults.settings, faults.logs))
        doomed = start_worker(faults, processes, gated_settings(faults))
        body = {"model": GATED_MODEL, "num_inference_steps": STEPS}
        ids = [
            submit(faults, prompt=f"a cat {i}", seed=i, webhook_url=receiver.url(f"/k/{i}"), **body) for i in range(3)
        ]
        wait_held(faults, ids, STEPS)  # all three mid-batch, waiting at the gate

        doomed.process.send_signal(signal.SIGKILL)  # no warm shutdown, no hand-back: only the leases tell
        doomed.process.wait()
        for job_id in ids:
            faults.gate.release(job_id)
        start_worker(faults, processes, gated_settings(faults))
        done = wait_terminal(faults, ids, timeout=180)

        for i, job_id in enumerate(ids):
            assert done[job_id]["status"] == "succeeded", done[job_id]
            assert done[job_id]["attempts"] == 2
            assert event_types(faults, job_id) == [
                "job.queued",
                "job.running",
                "job.requeued",
                "job.running",
                "job.succeeded",
            ]
            video = faults.videos.get(faults.videos.key_for(job_id))
            assert len(video) == done[job_id]["output"]["bytes"]
            # Exactly one job.succeeded webhook, sent once, though the job ran twice.
            with session_factory(faults.settings.database_url)() as s:
                rows = list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)))
            assert sorted(r.event_type for r in rows) == ["job.running", "job.running", "job.succeeded"]
            got = receiver.wait_for(f"/k/{i}", lambda hooks: len(hooks) >= 3, timeout=60)
            verifier = Webhook(faults.settings.webhook_secret)
            types = [verifier.verify(h.body, h.headers)["type"] for h in got]
            assert types.count("job.succeeded") == 1, types
            assert all(r.status == DeliveryStatus.DELIVERED for r in rows)
    finally:
        receiver.stop()
