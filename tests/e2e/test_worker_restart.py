"""Workers come and go: a stopped worker hands its running job back, a killed one's job is taken over.

Each test starts and stops its own worker processes, so the leases and the sweeper work across real
process boundaries. The job waits at a step gate (worker.step_gate) until the worker is gone, so it is
running when the worker stops however fast or loaded the machine is.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import (
    GATED_JOB,
    GATED_MODEL,
    held_at_gate,
    isolated,
    start_celery_service,
    wait_until,
    write_gated_registry,
)

from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.queue import make_celery, publish_job
from vidserve.schema import JobStatus
from vidserve.settings import Settings
from vidserve.tools.processes import ManagedProcess
from worker.step_gate import StepGate

RESTARTED_JOB = {k: v for k, v in GATED_JOB.items() if k != "model"}


@pytest.fixture
def restart_settings(settings: Settings, model_dir: Path, gate: StepGate) -> Settings:
    return isolated(
        settings,
        model_dir=str(model_dir),
        models_file=write_gated_registry(model_dir, gate),
        worker_models=GATED_MODEL,
        lease_seconds=4,
        # No grace period: the stopped worker must hand its running job back rather than finish it.
        shutdown_grace_seconds=0,
    )


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.stop()


def submit_long_job(settings: Settings, store: JobStore) -> str:
    job = store.create(model=GATED_MODEL, params=RESTARTED_JOB)
    celery = make_celery(settings)
    try:
        publish_job(celery, job.id, GATED_MODEL)
        store.mark_published(job.id)
    finally:
        celery.close()
    return str(job.id)


def wait_held(store: JobStore, job_id: str) -> None:
    steps = RESTARTED_JOB["num_inference_steps"]
    wait_until(lambda: held_at_gate(store, job_id, steps), 120, what="the first worker to hold the job at the gate")


def test_a_stopped_worker_hands_its_running_job_back_for_the_next_worker(
    restart_settings: Settings, processes: list[ManagedProcess], tmp_path: Path, gate: StepGate
) -> None:
    store = JobStore(restart_settings.database_url, lambda job: job_to_dict(job, None))
    first = start_celery_service("worker", restart_settings, tmp_path)
    processes.append(first)
    job_id = submit_long_job(restart_settings, store)
    wait_held(store, job_id)

    assert first.stop(timeout=30) == 0  # SIGTERM: Celery's warm shutdown
    job = store.get(job_id)
    assert job.status == JobStatus.QUEUED and job.lease_owner is None
    assert store.events(job_id)[-1].detail == {"reason": "worker shutdown"}

    gate.release(job_id)
    processes.append(start_celery_service("worker", restart_settings, tmp_path))
    wait_until(lambda: store.get(job_id).status.terminal, 180, interval=0.2, what="the second worker")
    job = store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2, [(e.type, e.detail) for e in store.events(job_id)]


def test_a_killed_workers_job_is_taken_over_when_its_lease_expires(
    restart_settings: Settings, processes: list[ManagedProcess], tmp_path: Path, gate: StepGate
) -> None:
    store = JobStore(restart_settings.database_url, lambda job: job_to_dict(job, None))
    doomed = start_celery_service("worker", restart_settings, tmp_path)
    processes.append(doomed)
    job_id = submit_long_job(restart_settings, store)
    wait_held(store, job_id)

    doomed.process.send_signal(signal.SIGKILL)  # no warm shutdown, no hand-back: only the lease tells
    doomed.process.wait()
    assert store.get(job_id).status == JobStatus.RUNNING  # killed mid-run: its lease is all that is left
    gate.release(job_id)
    successor = start_celery_service("worker", restart_settings, tmp_path)
    processes.append(successor)
    # The successor's sweeper returns the expired lease to the queue and publishes the job again.
    wait_until(lambda: store.get(job_id).status.terminal, 180, interval=0.2, what="the successor to finish the job")
    job = store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2 and job.lease_owner is None
    types = [e.type for e in store.events(job_id)]
    assert types == ["job.queued", "job.running", "job.requeued", "job.running", "job.succeeded"]
    assert store.events(job_id)[2].detail == {"reason": "lease expired"}
