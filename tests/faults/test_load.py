"""Promise: many jobs submitted concurrently by many clients against two workers all end, none lost, none
run twice. Reports throughput and latency. CI runs it small; `make bench-load` runs 200 jobs from 20 clients.

Size: VIDSERVE_LOAD_JOBS (default 40) and VIDSERVE_LOAD_CLIENTS (default 8)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Services, start_worker, submit, wait_terminal

from vidserve.schema import JobEvent
from vidserve.tools.processes import ManagedProcess

JOBS = int(os.environ.get("VIDSERVE_LOAD_JOBS", "40"))
CLIENTS = int(os.environ.get("VIDSERVE_LOAD_CLIENTS", "8"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.mark.slow
def test_concurrent_clients_against_two_workers_lose_and_duplicate_nothing(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    start_worker(faults, processes)
    start_worker(faults, processes)

    def client(index: int) -> list[str]:
        return [submit(faults, prompt=f"cat {n}", seed=n) for n in range(index, JOBS, CLIENTS)]

    started = time.time()
    with ThreadPoolExecutor(CLIENTS) as pool:
        ids = [job_id for batch in pool.map(client, range(CLIENTS)) for job_id in batch]
    submitted = time.time()
    done = wait_terminal(faults, ids, timeout=60 + JOBS * 2)

    assert len(set(ids)) == JOBS
    assert [d["status"] for d in done.values()] == ["succeeded"] * JOBS, [d["error"] for d in done.values()]
    rows = [faults.store.get(job_id) for job_id in ids]
    assert all(row.attempts == 1 for row in rows)
    for job_id in ids:
        events: list[JobEvent] = faults.store.events(job_id)
        assert [e.type for e in events] == ["job.queued", "job.running", "job.succeeded"], events
    stored = {o.object_name for o in faults.videos._internal.list_objects(faults.videos.bucket, "videos/")}
    assert {faults.videos.key_for(job_id) for job_id in ids} <= stored

    finished = max(row.finished_at.timestamp() for row in rows)
    latencies = [(row.finished_at - row.created_at).total_seconds() for row in rows]
    wall = finished - started
    report = (
        f"load: {JOBS} jobs from {CLIENTS} clients, 2 workers x {faults.settings.worker_slots} slots: "
        f"submitted in {submitted - started:.1f}s, all done in {wall:.1f}s, {JOBS / wall:.2f} jobs/s, "
        f"latency p50 {percentile(latencies, 0.5):.2f}s p95 {percentile(latencies, 0.95):.2f}s "
        f"max {max(latencies):.2f}s"
    )
    print(report)
    if path := os.environ.get("VIDSERVE_LOAD_REPORT"):
        with open(path, "a") as out:
            out.write(report + "\n")
