"""A job's whole path on the real services: HTTP submit → Postgres → Celery/Redis → worker → engine → MP4 → S3
→ signed webhooks. Nothing is mocked: the API, worker and webhook sender are subprocesses."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests
from service_harness import (
    GATE_STEP,
    GATED_JOB,
    GATED_STEPS,
    SERVED_MODEL,
    UNSERVED_MODEL,
    Stack,
    WebhookReceiver,
    held_at_gate,
    wait_until,
)
from standardwebhooks import Webhook

from vidserve.queue import make_celery, publish_job
from worker.step_gate import StepGate
from worker.video import decode_mp4

TERMINAL = {"succeeded", "failed", "canceled"}


def submit(stack: Stack, **body: Any) -> dict[str, Any]:
    response = requests.post(f"{stack.api_url}/v1/jobs", json={"model": SERVED_MODEL, **body}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()


def get_job(stack: Stack, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(stack: Stack, job_id: str, statuses: set[str], timeout: float = 120.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = get_job(stack, job_id)
        return job if job["status"] in statuses else None

    return wait_until(reached, timeout, interval=0.1, what=f"job {job_id} to reach {statuses}")


def event_types(stack: Stack, job_id: str) -> list[str]:
    return [e.type for e in stack.store.events(job_id)]


def test_submitted_job_becomes_a_playable_mp4_with_signed_webhooks(stack: Stack, receiver: WebhookReceiver) -> None:
    job = submit(
        stack,
        prompt="a red car on a street",
        num_frames=9,
        height=32,
        width=48,
        seed=7,
        webhook_url=receiver.url("/hooks/first"),
    )
    assert job["status"] == "queued"

    done = wait_status(stack, job["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1 and done["progress"] == 1.0 and done["error"] is None
    output = done["output"]
    assert output["content_type"] == "video/mp4"
    assert (output["num_frames"], output["height"], output["width"]) == (9, 32, 48)

    # The video is in the bucket under the job's key, and the presigned URL serves the same bytes.
    stored = stack.videos.get(stack.videos.key_for(job["id"]))
    download = requests.get(output["url"], timeout=10)
    assert download.status_code == 200 and download.content == stored
    assert len(stored) == output["bytes"]
    frames = decode_mp4(download.content)
    assert frames.shape == (9, 32, 48, 3)

    hooks = receiver.wait_for("/hooks/first", lambda got: len(got) >= 2)
    verifier = Webhook(stack.settings.webhook_secret)
    bodies = [verifier.verify(hook.body, hook.headers) for hook in hooks]
    assert [b["type"] for b in bodies] == ["job.running", "job.succeeded"]
    assert all(b["data"]["id"] == job["id"] for b in bodies)
    assert bodies[1]["data"]["status"] == "succeeded" and bodies[1]["data"]["output"]["url"]
    assert hooks[0].headers["webhook-id"] != hooks[1].headers["webhook-id"]


def test_cancel_while_queued_cancels_at_once(stack: Stack, receiver: WebhookReceiver) -> None:
    # No worker serves this model, so the job waits in its queue.
    response = requests.post(
        f"{stack.api_url}/v1/jobs",
        json={"model": UNSERVED_MODEL, "prompt": "a dog", "webhook_url": receiver.url("/hooks/queued")},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    cancel = requests.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel", timeout=10)
    assert cancel.status_code == 202, cancel.text
    job = get_job(stack, job_id)
    assert job["status"] == "canceled" and job["attempts"] == 0
    assert requests.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel", timeout=10).status_code == 409
    hooks = receiver.wait_for("/hooks/queued", lambda got: len(got) >= 1)
    assert Webhook(stack.settings.webhook_secret).verify(hooks[0].body, hooks[0].headers)["type"] == "job.canceled"


def test_cancel_while_running_stops_at_the_next_step(
    stack: Stack, receiver: WebhookReceiver, gated_jobs: StepGate
) -> None:
    # The job waits at the step gate (never released): running, mid-way, when the cancel comes.
    job = submit(stack, **GATED_JOB, webhook_url=receiver.url("/hooks/running"))
    wait_until(lambda: held_at_gate(stack.store, job["id"], GATED_STEPS), 120, interval=0.05, what="job held")

    asked = time.monotonic()
    assert requests.post(f"{stack.api_url}/v1/jobs/{job['id']}/cancel", timeout=10).status_code == 202
    done = wait_status(stack, job["id"], TERMINAL, timeout=30)
    stopped_after = time.monotonic() - asked

    assert done["status"] == "canceled", done
    assert done["progress"] == GATE_STEP / GATED_STEPS and done["output"] is None
    assert stopped_after < 10, stopped_after
    assert event_types(stack, job["id"]) == ["job.queued", "job.running", "job.canceled"]
    hooks = receiver.wait_for("/hooks/running", lambda got: len(got) >= 2)
    assert [h.json["type"] for h in hooks] == ["job.running", "job.canceled"]


def test_several_jobs_in_flight_all_succeed(stack: Stack, gated_jobs: StepGate) -> None:
    # Four jobs (the worker's slots) wait at the step gate until all four are there, so they are in flight together
    # however fast or loaded the machine is; released, they finish their steps in the same engine.
    jobs = [submit(stack, **{**GATED_JOB, "prompt": f"a small fish number {i}", "seed": i}) for i in range(4)]
    for job in jobs:
        wait_until(lambda j=job: held_at_gate(stack.store, j["id"], GATED_STEPS), 120, interval=0.05, what="held")
    for job in jobs:
        gated_jobs.release(job["id"])
    done = [wait_status(stack, job["id"], TERMINAL) for job in jobs]
    assert [d["status"] for d in done] == ["succeeded"] * 4, [d["error"] for d in done]
    for d in done:
        assert decode_mp4(requests.get(d["output"]["url"], timeout=10).content).shape == (9, 32, 32, 3)
    # The window hands waiting jobs to one engine, which advances them together.
    assert max(max(d["stats"]["batch_sizes"]) for d in done) > 1, [d["stats"] for d in done]


def test_duplicate_generate_messages_run_the_job_once(stack: Stack) -> None:
    job = submit(stack, prompt="a bird in the sky", num_inference_steps=8)
    celery = make_celery(stack.settings)
    try:
        for _ in range(3):  # what a broker's re-delivery or a sweeper's re-publish looks like
            publish_job(celery, uuid.UUID(job["id"]), SERVED_MODEL)
    finally:
        celery.close()
    done = wait_status(stack, job["id"], TERMINAL)
    assert done["status"] == "succeeded" and done["attempts"] == 1

    # Each of the four wake-ups naming the job is taken: it claims the job (once) or the fairest other waiting job,
    # or finds nothing waiting and is dropped; the worker logs which. All four are taken before the events are read.
    def handled(log: str) -> int:
        return log.count(f"woken by {job['id']})") + log.count(f"wake-up for job {job['id']}: no ")

    wait_until(lambda: handled(stack.worker.log_tail(1_000_000)) >= 4, 60, what="the duplicates to be taken")
    assert event_types(stack, job["id"]) == ["job.queued", "job.running", "job.succeeded"]


def test_webhook_is_retried_on_the_schedule_until_the_receiver_accepts(stack: Stack, receiver: WebhookReceiver) -> None:
    receiver.fail_each_first["/hooks/flaky"] = 2  # job.running fails 2x, job.succeeded 2x, whatever the timing
    job = submit(stack, prompt="a slow river", webhook_url=receiver.url("/hooks/flaky"))
    wait_status(stack, job["id"], TERMINAL)
    hooks = receiver.wait_for("/hooks/flaky", lambda got: sum(h.status == 200 for h in got) >= 2)
    verifier = Webhook(stack.settings.webhook_secret)
    by_id: dict[str, list[Any]] = {}
    for hook in hooks:
        verifier.verify(hook.body, hook.headers)
        by_id.setdefault(hook.headers["webhook-id"], []).append(hook)
    assert sorted(h[-1].json["type"] for h in by_id.values()) == ["job.running", "job.succeeded"]
    for sends in by_id.values():
        # Every retry sends the same event; only a succeeded job's video link is presigned again at each attempt.
        assert len({json.dumps(_without_link(s.json), sort_keys=True) for s in sends}) == 1
        assert sends[-1].status == 200
        gaps = [b.at - a.at for a, b in zip(sends, sends[1:], strict=False)]
        # The Standard Webhooks schedule (5 s, 5 min, ...) times the suite's scale, less 20% jitter: each wait at
        # least that (minus clock slack).
        least = [step * stack.settings.webhook_retry_scale * 0.8 - 0.05 for step in (5, 300)]
        assert all(gap >= least[i] for i, gap in enumerate(gaps)), gaps
    total_attempts = sum(len(s) for s in by_id.values())
    assert total_attempts == 6


def _without_link(body: dict[str, Any]) -> dict[str, Any]:
    output = body["data"].get("output")
    if not output:
        return body
    kept = {k: v for k, v in output.items() if k not in ("url", "expires_at")}
    return {**body, "data": {**body["data"], "output": kept}}
