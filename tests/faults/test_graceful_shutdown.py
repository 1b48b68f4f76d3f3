"""Promise: SIGTERM lets running jobs finish within the grace period, then hands the rest back to the queue;
no job is left `running`: the next worker takes the handed-back job at once."""

from __future__ import annotations

import dataclasses
import time

import requests
from conftest import Services, event_types, job, start_worker, submit, wait_running, wait_terminal
from service_harness import wait_until

from vidserve.processes import ManagedProcess

GRACE_SECONDS = 10.0


def test_sigterm_finishes_short_jobs_and_hands_back_long_ones(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    settings = dataclasses.replace(faults.settings, shutdown_grace_seconds=GRACE_SECONDS)
    first = start_worker(faults, processes, settings)
    short = [submit(faults, prompt=f"a fish {i}", seed=i, num_inference_steps=1000) for i in range(2)]
    long = submit(faults, prompt="a long walk", num_inference_steps=30000)  # outlasts the grace period
    wait_running(faults, [*short, long])

    asked = time.monotonic()
    first.terminate()  # SIGTERM: Celery's warm shutdown
    assert first.process.wait(GRACE_SECONDS + 20) == 0
    took = time.monotonic() - asked

    done = wait_terminal(faults, short, timeout=5)
    assert all(d["status"] == "succeeded" and d["attempts"] == 1 for d in done.values()), done
    handed_back = job(faults, long)
    assert handed_back["status"] == "queued", handed_back
    assert faults.store.events(long)[-1].detail == {"reason": "worker shutdown"}
    assert GRACE_SECONDS - 0.5 < took < GRACE_SECONDS + 15, took  # waited for the grace period, not forever

    start_worker(faults, processes)
    wait_until(lambda: job(faults, long)["attempts"] == 2, 60, interval=0.1, what="the next worker to take it")
    assert requests.post(f"{faults.api_url}/v1/jobs/{long}/cancel", timeout=30).status_code == 202
    assert wait_terminal(faults, [long], timeout=30)[long]["status"] == "canceled"
    assert event_types(faults, long) == ["job.queued", "job.running", "job.requeued", "job.running", "job.canceled"]
