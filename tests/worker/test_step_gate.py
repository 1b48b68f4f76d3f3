"""The step gate a registry entry can ask for (tests only): which entries make one, and when it holds a job."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_harness import GATE_STEP, GATED_MODEL

from worker.context import WorkerContext
from worker.step_gate import StepGate


def test_an_entry_without_a_gate_holds_nothing() -> None:
    assert StepGate.from_options({}) is None
    assert StepGate.from_options({"max_sequence_length": 64}) is None


@pytest.mark.parametrize(
    "entry",
    [
        {"at_step": 2},
        {"release_dir": "/tmp/x"},
        {"at_step": 0, "release_dir": "/tmp/x"},
        {"at_step": "2", "release_dir": "/tmp/x"},
        {"at_step": True, "release_dir": "/tmp/x"},
        {"at_step": 2, "release_dir": ""},
        {"at_step": 2, "release_dir": "/tmp/x", "other": 1},
        "at step 2",
    ],
)
def test_a_malformed_gate_is_refused(entry: object) -> None:
    with pytest.raises(ValueError, match="step_gate"):
        StepGate.from_options({"step_gate": entry})


def test_the_gate_holds_at_its_step_until_the_job_or_every_job_is_released(tmp_path: Path) -> None:
    gate = StepGate.from_options({"step_gate": {"at_step": 3, "release_dir": str(tmp_path / "gate")}})
    assert gate == StepGate(3, tmp_path / "gate")
    assert [gate("job-a", step) for step in range(5)] == [False, False, False, True, False]

    gate.release("job-a")
    assert not gate("job-a", 3) and gate("job-b", 3)
    gate.release()
    assert not gate("job-b", 3)


def test_the_worker_builds_the_gated_models_engine_with_the_gate(gated_ctx: WorkerContext, gate: StepGate) -> None:
    engine = gated_ctx.engines.get(GATED_MODEL)
    assert engine.config.hold == gate and gate.at_step == GATE_STEP
