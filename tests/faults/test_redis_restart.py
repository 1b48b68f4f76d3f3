"""Promise: Redis restarted (without persistence) while jobs are queued and running loses no accepted job.

The queued jobs' messages die with the broker; the sweeper notices the broker lost its data and re-publishes
every queued job from Postgres. The running jobs finish where they are; none runs twice. A job submitted while
Redis is away is accepted all the same and runs once it is back."""

from __future__ import annotations

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

from vidserve.tools.processes import ManagedProcess


def test_jobs_survive_a_redis_restart(faults: Services, processes: list[ManagedProcess]) -> None:
    start_worker(faults, processes, gated_settings(faults), VIDSERVE_WORKER_SLOTS="2")
    # Two held jobs fill the window (they still run when Redis dies); three short ones wait in the broker.
    held = [submit(faults, model=GATED_MODEL, prompt=f"dog {i}", seed=i) for i in range(2)]
    ids = [*held, *(submit(faults, prompt=f"dog {i}", seed=i, num_inference_steps=20) for i in range(2, 5))]
    wait_held(faults, held, 8)

    faults.redis.kill()
    faults.redis.start()
    for job_id in held:
        faults.gate.release(job_id)
    done = wait_terminal(faults, ids, timeout=90)

    assert [d["status"] for d in done.values()] == ["succeeded"] * 5, done
    for job_id in ids:
        # One claim per job: nothing ran twice, the re-published duplicates were ignored.
        assert event_types(faults, job_id) == ["job.queued", "job.running", "job.succeeded"]
        assert done[job_id]["attempts"] == 1


def test_a_submit_while_redis_is_down_is_accepted_and_runs_when_it_returns(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    start_worker(faults, processes)
    faults.redis.kill()
    try:
        # Accepted without a broker: the job is committed in Postgres, and the answer does not wait for Redis.
        response = requests.post(
            f"{faults.api_url}/v1/jobs", json={"model": MODEL, "prompt": "a heron", "seed": 3}, timeout=10
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert faults.store.get(job_id).published_at is None  # stored, never published
    finally:
        faults.redis.start()

    # The sweeper publishes it from Postgres once the broker is back.
    done = wait_terminal(faults, [job_id], timeout=90)[job_id]
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert event_types(faults, job_id) == ["job.queued", "job.running", "job.succeeded"]
