"""Promise: a poison job (one that crashes the engine every time) fails alone after the configured attempts,
with its error recorded; its batch mates succeed and the worker keeps serving.

The poison is honest: a checkpoint whose text encoder is shorter than its tokenizer (see `poison_model`), so
prompts of whole known words generate and any other prompt raises an IndexError inside the engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import POISON_MODEL, POISON_PROMPT, Services, event_types, start_worker, submit, wait_terminal

from vidserve.tools.processes import ManagedProcess

GOOD_PROMPTS = ("cat", "dog in the city", "red car")


@pytest.fixture(scope="module")
def worker(faults: Services) -> Iterator[ManagedProcess]:
    """One worker serving only the poisoned model for the module (a start costs seconds): it must keep serving
    through every poison job anyway."""
    started: list[ManagedProcess] = []
    try:
        yield start_worker(faults, started, VIDSERVE_WORKER_MODELS=POISON_MODEL)
    finally:
        for proc in started:
            proc.stop(timeout=30)


def assert_poisoned(faults: Services, failed: dict) -> None:
    assert failed["status"] == "failed", failed
    assert failed["attempts"] == faults.settings.max_attempts
    assert failed["error"]["code"] == "engine_error" and "IndexError" in failed["error"]["message"], failed["error"]


def test_a_poison_job_fails_after_the_configured_attempts_and_the_worker_keeps_serving(
    faults: Services, worker: ManagedProcess
) -> None:
    poison = submit(faults, model=POISON_MODEL, prompt=POISON_PROMPT, num_inference_steps=8)
    assert_poisoned(faults, wait_terminal(faults, [poison], timeout=90)[poison])
    retries = [e.detail["reason"] for e in faults.store.events(poison) if e.type == "job.requeued"]
    assert len(retries) == faults.settings.max_attempts - 1 and all("IndexError" in r for r in retries), retries

    assert worker.alive()
    after = submit(faults, model=POISON_MODEL, prompt="bird in the sky", num_inference_steps=8)
    assert wait_terminal(faults, [after], timeout=60)[after]["status"] == "succeeded"
    assert event_types(faults, after) == ["job.queued", "job.running", "job.succeeded"]


def test_the_batch_mates_of_a_poison_job_succeed(faults: Services, worker: ManagedProcess) -> None:
    # Submitted together, so the engine admits them together: the poison shares their batch.
    mates = [submit(faults, model=POISON_MODEL, prompt=p, num_inference_steps=8) for p in GOOD_PROMPTS[:2]]
    poison = submit(faults, model=POISON_MODEL, prompt=POISON_PROMPT, num_inference_steps=8)
    mates += [submit(faults, model=POISON_MODEL, prompt=p, num_inference_steps=8) for p in GOOD_PROMPTS[2:]]
    done = wait_terminal(faults, [poison, *mates], timeout=90)

    assert_poisoned(faults, done[poison])
    # Alone: the mates succeed on their first attempt, not after retries that the poison forced on them.
    assert [(done[m]["status"], done[m]["attempts"]) for m in mates] == [("succeeded", 1)] * len(mates), [
        event_types(faults, m) for m in mates
    ]
    assert worker.alive()
