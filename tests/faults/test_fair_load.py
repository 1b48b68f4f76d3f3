"""Promise: a key that floods the queue does not starve another key. Key A submits many jobs at once, key B a few
once A's first job has started, against two workers; B's jobs start within its fair share, every job ends once,
none runs twice.
Reports each key's p50/p95 latency, B's p95 over B's p95 alone, and throughput against the FIFO run (the same
jobs under one key, which the fair queue runs oldest first).

Jobs are stored with the job store under each key and published the way the API publishes them (the fault
suite's API runs with authentication off). Size: VIDSERVE_FAIR_A_JOBS (default 20), VIDSERVE_FAIR_B_JOBS (5);
`make bench-load` runs 200 and 10. Whatever happens, the test cancels the jobs it left unfinished: the fault
tests share one database, and a leftover flood would take the next test's turns."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator

import pytest
from conftest import MODEL, Services, start_worker, wait_terminal
from service_harness import wait_until
from test_load import percentile

from vidserve.jobs import JobStore
from vidserve.keys import KeyStore
from vidserve.queue import announce_job, make_celery
from vidserve.schema import Job
from vidserve.tools.processes import ManagedProcess

A_JOBS = int(os.environ.get("VIDSERVE_FAIR_A_JOBS", "20"))
B_JOBS = int(os.environ.get("VIDSERVE_FAIR_B_JOBS", "5"))
PARAMS = {"prompt": "a cat", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4, "fps": 8}


def submit_many(faults: Services, key: uuid.UUID | None, n: int, tag: str, ids: list[str]) -> list[str]:
    """Store and publish `n` jobs of `key`; returns their ids, also appended to `ids` (every job of the test)."""
    store, celery = faults.store, make_celery(faults.settings)
    made = []
    for i in range(n):
        job = store.create(model=MODEL, params={**PARAMS, "seed": i, "prompt": f"{tag} {i}"}, api_key_id=key)
        ids.append(str(job.id))
        assert announce_job(celery, store, job.id, MODEL)
        made.append(str(job.id))
    return made


@pytest.fixture
def submitted(faults: Services) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    store = faults.store
    for job_id in store.unfinished(ids):
        store.cancel(job_id)


def rows(store: JobStore, ids: list[str]) -> list[Job]:
    return [store.get(job_id) for job_id in ids]


def latencies(jobs: list[Job]) -> list[float]:
    return [(job.finished_at - job.created_at).total_seconds() for job in jobs]


def run(
    faults: Services, a_key: uuid.UUID | None, b_key: uuid.UUID | None, ids: list[str]
) -> tuple[list[Job], list[Job], float]:
    """A's jobs at once, B's once A's first job has started; both keys' finished rows and the throughput in jobs/s."""
    a = submit_many(faults, a_key, A_JOBS, "flood", ids)
    # B arrives once the flood is being served (an observable state, not a fixed second): A's backlog is then
    # what B's jobs would wait behind under FIFO.
    wait_until(lambda: any(job.started_at is not None for job in rows(faults.store, a)), 120, 0.05, "A's first start")
    b = submit_many(faults, b_key, B_JOBS, "trickle", ids)
    done = wait_terminal(faults, a + b, timeout=120 + (A_JOBS + B_JOBS) * 3)
    assert [d["status"] for d in done.values()] == ["succeeded"] * len(done), [d["error"] for d in done.values()]
    a_rows, b_rows = rows(faults.store, a), rows(faults.store, b)
    assert all(job.attempts == 1 for job in a_rows + b_rows)  # none ran twice
    everything = a_rows + b_rows
    wall = max(j.finished_at for j in everything) - min(j.created_at for j in everything)
    return a_rows, b_rows, len(everything) / wall.total_seconds()


@pytest.mark.slow
@pytest.mark.timeout(600 + 12 * (A_JOBS + B_JOBS))
def test_a_key_that_floods_does_not_delay_another_keys_jobs_beyond_its_share(
    faults: Services, processes: list[ManagedProcess], submitted: list[str]
) -> None:
    start_worker(faults, processes)
    start_worker(faults, processes)
    keys = KeyStore(faults.settings.database_url)
    a_key, b_key = (keys.create(f"fair-{name}-{uuid.uuid4().hex[:6]}", ["jobs:write"])[0].id for name in "AB")

    alone_ids = submit_many(faults, b_key, B_JOBS, "alone", submitted)
    wait_terminal(faults, alone_ids, timeout=120 + B_JOBS * 3)
    b_alone_p95 = percentile(latencies(rows(faults.store, alone_ids)), 0.95)

    a_rows, b_rows, fair_throughput = run(faults, a_key, b_key, submitted)
    # The order jobs started in: once B's jobs are stored, A's jobs start only while B's take their share.
    b_stored = min(job.created_at for job in b_rows)
    b_last_start = max(job.started_at for job in b_rows)
    a_meanwhile = sum(1 for job in a_rows if b_stored < job.started_at < b_last_start)
    slots = 2 * faults.settings.worker_slots
    assert a_meanwhile <= B_JOBS + slots, f"{a_meanwhile} of A's jobs started while B's {B_JOBS} waited"

    _, _, fifo_throughput = run(faults, None, None, submitted)  # one key: the fair queue is FIFO

    a_lat, b_lat = latencies(a_rows), latencies(b_rows)
    b_p95 = percentile(b_lat, 0.95)
    load = os.getloadavg()
    report = (
        f"fair load: A {A_JOBS} jobs at once, B {B_JOBS} once A started, 2 workers x {faults.settings.worker_slots}"
        f" slots: A p50 {percentile(a_lat, 0.5):.2f}s p95 {percentile(a_lat, 0.95):.2f}s; B p50"
        f" {percentile(b_lat, 0.5):.2f}s p95 {b_p95:.2f}s; B alone p95 {b_alone_p95:.2f}s: B p95 / alone"
        f" {b_p95 / b_alone_p95:.2f}x; A's starts while B waited {a_meanwhile}; throughput {fair_throughput:.2f} jobs/s"
        f" vs FIFO {fifo_throughput:.2f} jobs/s ({fair_throughput / fifo_throughput - 1:+.1%});"
        f" load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at {dt.datetime.now(dt.UTC):%H:%M}Z"
    )
    print(report)
    if path := os.environ.get("VIDSERVE_LOAD_REPORT"):
        with open(path, "a") as out:
            out.write(report + "\n")
