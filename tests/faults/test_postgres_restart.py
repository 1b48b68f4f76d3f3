"""Promise: Postgres restarted while a worker finishes a job loses no result, and the API answers 503 with a
JSON body (never a 500) while the database is away; the project's client retries through such an outage."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import requests
from conftest import (
    GATED_MODEL,
    MODEL,
    Services,
    event_types,
    gated_settings,
    start_worker,
    submit,
    wait_held,
    wait_terminal,
)
from service_harness import wait_until

from vidserve.tools.client import VidserveClient
from vidserve.tools.processes import ManagedProcess


def test_a_result_finished_while_postgres_is_down_is_recorded_when_it_returns(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    worker = start_worker(faults, processes, gated_settings(faults))
    job_id = submit(faults, model=GATED_MODEL, prompt="a horse in the rain", num_inference_steps=8)
    wait_held(faults, [job_id], 8)  # running, and it stays so until Postgres is gone

    faults.postgres.stop("fast")
    try:
        read = requests.get(f"{faults.api_url}/v1/jobs/{job_id}", timeout=30)
        write = requests.post(f"{faults.api_url}/v1/jobs", json={"model": MODEL, "prompt": "a cat"}, timeout=30)
        listing = requests.get(f"{faults.api_url}/v1/jobs", timeout=30)
        for response in (read, write, listing):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "database_unavailable"
        # Released now, the engine finishes, the upload works, and the final write fails: the worker keeps retrying.
        faults.gate.release(job_id)
        wait_until(
            lambda: "recording success failed" in worker.log_tail(200_000),
            60,
            interval=0.1,
            what="the worker to try its final write",
        )
    finally:
        faults.postgres.start()

    done = wait_terminal(faults, [job_id], timeout=60)[job_id]
    # Run once: if the sweeper took the lease back while Postgres was away (the outage outlived the 4 s lease),
    # the worker's retried final write still lands as long as no other worker claimed the job in between.
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert event_types(faults, job_id) in (
        ["job.queued", "job.running", "job.succeeded"],
        ["job.queued", "job.running", "job.requeued", "job.succeeded"],
    )
    assert len(faults.videos.get(faults.videos.key_for(job_id))) == done["output"]["bytes"]


def test_the_client_rides_out_a_short_postgres_outage_and_makes_one_job(faults: Services) -> None:
    prompt = f"a kite over dunes {uuid.uuid4().hex[:6]}"
    assert faults.api is not None and faults.api.log_path is not None
    api_log = faults.api.log_path
    seen = len(api_log.read_text(errors="replace"))
    answers: list[dict[str, Any] | BaseException] = []

    def submit_with_client() -> None:
        try:
            answers.append(VidserveClient(faults.api_url).submit(MODEL, prompt))
        except BaseException as exc:  # reported by the assertion below
            answers.append(exc)

    faults.postgres.stop("fast")
    client = threading.Thread(target=submit_with_client)
    try:
        # The API answers 503 until Postgres is back; the client retries the submit under one Idempotency-Key.
        client.start()
        # Postgres comes back once the API has refused the client's first try (each 503 is logged).
        wait_until(
            lambda: "database unavailable" in api_log.read_text(errors="replace")[seen:],
            60,
            interval=0.05,
            what="the API to refuse the client's first try",
        )
    finally:
        faults.postgres.start()
    client.join(60)

    assert len(answers) == 1 and isinstance(answers[0], dict), answers
    submitted = answers[0]
    assert submitted["status"] == "queued"
    listed = requests.get(f"{faults.api_url}/v1/jobs", params={"limit": 100}, timeout=30).json()["data"]
    assert [job["id"] for job in listed if job["params"]["prompt"] == prompt] == [submitted["id"]]
