"""Preemption: with every slot busy with a low-priority job, a high-priority job takes the slot over at the low
job's next checkpoint; the low job goes back to the queue and resumes from that step, ending with the video of an
uninterrupted run with the same batch mates. Real tiny Wan engine, Postgres and S3 server; the worker's slot runs
on a thread of the test.

The low job runs on the gated model (worker.step_gate): it waits at GATE_STEP, so the high job arrives while it
is mid-way whatever the machine's speed. That engine serves one job at a time here (the high job enters it only
once the low one has stopped), so the interrupted and the uninterrupted runs have the same batch mates (none) and
their frames are equal bit for bit.
"""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import numpy as np
from service_harness import GATE_STEP, GATED_MODEL, held_at_gate, wait_until

from engine.checkpoint import Checkpoint
from vidserve.jobs import PRIORITIES
from vidserve.schema import JobStatus
from vidserve.storage import VideoStore
from worker import tasks
from worker.context import WorkerContext
from worker.preemption import Slots
from worker.step_gate import StepGate
from worker.video import decode_mp4

STEPS = 8
# Checkpoints every EVERY steps: the low job gives way at the first one after the high job was claimed.
EVERY = 2
PARAMS = {"prompt": "a slow river", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": STEPS, "seed": 7}


def one_slot_worker(ctx: WorkerContext, every: int = EVERY) -> WorkerContext:
    """The module's worker with one slot, its own slot registry and shutdown flag (engines and stores shared)."""
    settings = dataclasses.replace(ctx.settings, checkpoint_every_steps=every, worker_slots=1)
    return dataclasses.replace(ctx, settings=settings, shutting_down=threading.Event(), slots=Slots())


def create_job(ctx: WorkerContext, priority: str) -> str:
    return str(ctx.store.create(model=GATED_MODEL, params=PARAMS, priority=PRIORITIES[priority]).id)


def frames_of(ctx: WorkerContext, job_id: str) -> np.ndarray:
    return decode_mp4(ctx.videos.get(ctx.store.get(job_id).output["key"]))


def test_a_high_priority_job_takes_over_the_busy_slot_and_the_low_job_resumes_from_its_checkpoint(
    gated_ctx: WorkerContext, gate: StepGate
) -> None:
    store = gated_ctx.store
    worker = one_slot_worker(gated_ctx)
    low = create_job(gated_ctx, "low")
    outcome: list[str] = []
    slot = threading.Thread(target=lambda: outcome.append(tasks.generate(worker, low)))
    slot.start()
    wait_until(lambda: held_at_gate(store, low, STEPS), 120, interval=0.02, what="the low job at the gate")

    high = create_job(gated_ctx, "high")
    gate.release(high)
    # The only slot is busy: the high job is claimed for it, and waits for the low job's next checkpoint.
    wait_until(lambda: store.get(high).status == JobStatus.RUNNING, 60, interval=0.02, what="the high job's claim")
    assert store.get(low).status == JobStatus.RUNNING
    gate.release(low)
    slot.join(120)

    assert outcome == ["preempted,succeeded"]
    assert store.get(high).status == JobStatus.SUCCEEDED
    preempted = store.get(low)
    assert preempted.status == JobStatus.QUEUED
    requeued = store.events(low)[-1]
    assert requeued.type == "job.requeued" and requeued.detail == {"reason": f"preempted by job {high}"}
    key = VideoStore.checkpoint_key(low)
    assert Checkpoint.from_bytes(gated_ctx.videos.get(key)).step == GATE_STEP + EVERY

    assert tasks.generate(one_slot_worker(gated_ctx), low) == "succeeded"
    resumed = store.get(low)
    assert resumed.attempts == 2 and resumed.stats["resumed_from_step"] == GATE_STEP + EVERY
    assert store.get(high).started_at < resumed.finished_at
    assert [e.type for e in store.events(low)] == [
        "job.queued",
        "job.running",
        "job.requeued",
        "job.running",
        "job.succeeded",
    ]

    uninterrupted = create_job(gated_ctx, "low")
    gate.release(uninterrupted)
    assert tasks.generate(one_slot_worker(gated_ctx, every=0), uninterrupted) == "succeeded"
    assert np.array_equal(frames_of(gated_ctx, low), frames_of(gated_ctx, uninterrupted))


def attempt(priority: int, claimed_at: float, taker: object = None) -> SimpleNamespace:
    return SimpleNamespace(priority=priority, claimed_at=claimed_at, taker=taker)


def test_the_slot_that_gives_way_is_the_lowest_priority_latest_claimed_and_only_when_every_slot_is_busy() -> None:
    slots = Slots()
    old_low, new_low, normal = attempt(0, 1.0), attempt(0, 2.0), attempt(1, 3.0)
    with slots.running(old_low), slots.running(normal):
        assert not slots.gives_way(old_low, capacity=3)  # a free slot: the waiting job takes that one
        assert slots.gives_way(old_low, capacity=2)
        assert not slots.gives_way(normal, capacity=2)
        with slots.running(new_low):
            assert slots.gives_way(new_low, capacity=3) and not slots.gives_way(old_low, capacity=3)
            new_low.taker = "a high job"  # already taken over: the next one gives way to another waiting job
            assert slots.gives_way(old_low, capacity=3)
