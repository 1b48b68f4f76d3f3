"""Promise: SIGTERM lets running jobs finish within the grace period, then hands the rest back to the queue;
no job is left `running`: the next worker takes the handed-back job at once.

All three jobs wait at the step gate when SIGTERM comes; the short ones are released during the grace period, the
long one never, so which job finishes does not depend on the machine's speed."""

from __future__ import annotations

import time

import requests
from conftest import (
    GATE_STEP,
    GATED_MODEL,
    Services,
    event_types,
    gated_settings,
    job,
    start_worker,
    submit,
    wait_held,
    wait_terminal,
)

from vidserve.tools.processes import ManagedProcess

# Enough for the released jobs' last step, encoding and upload on a loaded machine (about a second each there); the
# held job waits it out in full.
GRACE_SECONDS = 6.0
STEPS = 8
SHORT_STEPS = GATE_STEP + 1  # released at the gate, one step is left


def test_sigterm_finishes_short_jobs_and_hands_back_long_ones(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    first = start_worker(faults, processes, gated_settings(faults, shutdown_grace_seconds=GRACE_SECONDS))
    short = [
        submit(faults, model=GATED_MODEL, prompt=f"a fish {i}", seed=i, num_inference_steps=SHORT_STEPS)
        for i in range(2)
    ]
    long = submit(faults, model=GATED_MODEL, prompt="a long walk", num_inference_steps=STEPS)  # held past the grace
    wait_held(faults, short, SHORT_STEPS)
    wait_held(faults, [long], STEPS)

    asked = time.monotonic()
    first.terminate()  # SIGTERM: Celery's warm shutdown
    for job_id in short:
        faults.gate.release(job_id)  # they finish within the grace period
    # The bound is generous (a loaded machine stops slowly); what matters is the grace period's lower bound below.
    assert first.process.wait(GRACE_SECONDS + 60) == 0
    took = time.monotonic() - asked

    done = wait_terminal(faults, short, timeout=5)
    assert all(d["status"] == "succeeded" and d["attempts"] == 1 for d in done.values()), done
    handed_back = job(faults, long)
    assert handed_back["status"] == "queued", handed_back
    assert faults.store.events(long)[-1].detail == {"reason": "worker shutdown"}
    assert GRACE_SECONDS - 0.5 < took < GRACE_SECONDS + 60, took  # waited for the grace period, not forever

    start_worker(faults, processes, gated_settings(faults))
    wait_held(faults, [long], STEPS)  # the next worker took it and holds it at the gate again
    assert job(faults, long)["attempts"] == 2
    assert requests.post(f"{faults.api_url}/v1/jobs/{long}/cancel", timeout=30).status_code == 202
    assert wait_terminal(faults, [long], timeout=120)[long]["status"] == "canceled"
    assert event_types(faults, long) == ["job.queued", "job.running", "job.requeued", "job.running", "job.canceled"]
