"""The engine's test hook `hold`: a request held at step k waits there, its batch mates go on, a cancel still
stops it, and once released it finishes with the frames of a run that was never held."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import Engine, RequestCanceled


class Gate:
    """Holds the named requests at `step` until `open` is set."""

    def __init__(self, step: int, names: set[str]) -> None:
        self.step, self.names = step, names
        self.open = threading.Event()

    def __call__(self, request_id: str, step: int) -> bool:
        return request_id in self.names and step == self.step and not self.open.is_set()


def test_a_held_request_waits_at_its_step_while_its_batch_mates_finish(specs, make_request):
    gate = Gate(2, {"held"})
    reached = threading.Event()
    progress: list[int] = []

    def on_progress(step: int, total: int) -> None:
        progress.append(step)
        if step == 2:
            reached.set()

    held = make_request("wan", "held", prompt="a held horse", num_inference_steps=5, seed=3)
    with Engine(specs["wan"], hold=gate, output="float32") as engine:
        future = engine.submit(held, on_progress)
        assert reached.wait(120)
        mate = engine.submit(make_request("wan", "mate", prompt="a free bird", num_inference_steps=6, seed=4))
        assert mate.result(120).stats.steps_computed == 6  # the mate ran all its steps while the other waited
        assert progress == [1, 2] and not future.done()  # still at the gate's step

        gate.open.set()
        frames = future.result(120).frames
        assert progress == [1, 2, 3, 4, 5]
        # Released, it ends where a never-held run ends (each step of both ran alone: the same batch mates).
        never_held = engine.generate(
            [make_request("wan", "again", prompt="a held horse", num_inference_steps=5, seed=3)]
        )
    assert np.array_equal(frames, never_held[0].frames)


def test_a_held_request_can_be_canceled(specs, make_request):
    gate = Gate(1, {"doomed"})
    reached = threading.Event()
    with Engine(specs["wan"], hold=gate) as engine:
        future = engine.submit(make_request("wan", "doomed", num_inference_steps=4), lambda s, n: reached.set())
        assert reached.wait(120)
        assert engine.cancel("doomed") is True
        with pytest.raises(RequestCanceled):
            future.result(120)
        assert engine.num_unfinished == 0
