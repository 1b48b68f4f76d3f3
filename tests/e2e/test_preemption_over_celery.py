"""Preemption across real processes: a worker whose only slot runs a low-priority job hands that slot to a
high-priority job at the low job's next checkpoint; the low job's own wake-up brings it back to the same worker
once the slot is free, and it resumes from that checkpoint's step.

The low job waits at a step gate (worker.step_gate) until the high job has been claimed, so it is mid-way when the
high job arrives however fast or loaded the machine is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import (
    GATE_STEP,
    GATED_MODEL,
    held_at_gate,
    isolated,
    start_celery_service,
    wait_until,
    write_gated_registry,
)

from vidserve.job_view import job_to_dict
from vidserve.jobs import PRIORITIES, JobStore
from vidserve.queue import announce_job, make_celery
from vidserve.schema import JobStatus
from vidserve.settings import Settings
from vidserve.tools.processes import ManagedProcess
from worker.step_gate import StepGate

STEPS = 8
EVERY = 2
PARAMS = {"prompt": "a slow river", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": STEPS}


@pytest.fixture
def one_slot(settings: Settings, model_dir: Path, gate: StepGate) -> Settings:
    return isolated(
        settings,
        model_dir=str(model_dir),
        models_file=write_gated_registry(model_dir, gate),
        worker_models=GATED_MODEL,
        worker_slots=1,
        checkpoint_every_steps=EVERY,
    )


@pytest.fixture
def worker(one_slot: Settings, tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_celery_service("worker", one_slot, tmp_path)
    yield proc
    proc.stop()


def submit(settings: Settings, store: JobStore, priority: str) -> str:
    job = store.create(model=GATED_MODEL, params=PARAMS, priority=PRIORITIES[priority])
    celery = make_celery(settings)
    try:
        assert announce_job(celery, store, job.id, GATED_MODEL)
    finally:
        celery.close()
    return str(job.id)


def test_a_high_priority_job_takes_the_only_slot_and_the_low_job_resumes_after_it(
    one_slot: Settings, worker: ManagedProcess, gate: StepGate
) -> None:
    store = JobStore(one_slot.database_url, lambda job: job_to_dict(job, None))
    low = submit(one_slot, store, "low")
    wait_until(lambda: held_at_gate(store, low, STEPS), 120, what="the low job at the gate")

    high = store.create(model=GATED_MODEL, params=PARAMS, priority=PRIORITIES["high"])
    gate.release(str(high.id))
    submit_high = make_celery(one_slot)
    try:
        assert announce_job(submit_high, store, high.id, GATED_MODEL)
    finally:
        submit_high.close()
    wait_until(lambda: store.get(high.id).status == JobStatus.RUNNING, 60, what="the high job's claim")
    gate.release(low)

    wait_until(lambda: store.get(low).status.terminal, 180, interval=0.2, what="both jobs to finish")
    high_job, low_job = store.get(high.id), store.get(low)
    assert high_job.status == JobStatus.SUCCEEDED and low_job.status == JobStatus.SUCCEEDED, worker.log_tail()
    assert high_job.finished_at < low_job.finished_at
    events = store.events(low)
    assert [e.type for e in events] == ["job.queued", "job.running", "job.requeued", "job.running", "job.succeeded"]
    assert events[2].detail == {"reason": f"preempted by job {high.id}"}
    assert low_job.attempts == 2 and low_job.stats["resumed_from_step"] == GATE_STEP + EVERY
