"""A request checkpointed at step k and finished by a fresh engine gives the frames of an uninterrupted run.

Every family and variant, bit for bit, through the checkpoint's bytes; inside mixed batches (to the batching
tolerance: a batched forward differs from a lone one in the last bits); with approximate step caches; across a
layer split (the state lives in the coordinating engine). A checkpoint of another request is refused.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine import CheckpointMismatch, Engine
from engine.checkpoint import Checkpoint
from engine.families import FAMILIES

ALL = [*FAMILIES, "wan2.2", "cogvideox-dpm", "hunyuanvideo-true-cfg"]
TOLERANCE = 1e-5  # as tests/engine/test_exactness.py: a request's frames alone vs inside a batch
STEPS = 6


def unseen_prompts(tag: str) -> dict[str, str]:
    """Prompts no other test encodes. A prompt's embedding depends in its last bits on the prompts it was encoded
    with, and the session's engines keep embeddings from earlier tests: the uninterrupted run and the fresh engine
    must both encode these alone."""
    return {"prompt": f"a resumed clip of {tag}", "negative_prompt": f"low quality {tag}"}


def family_of(name: str) -> str:
    return {"wan2.2": "wan", "cogvideox-dpm": "cogvideox", "hunyuanvideo-true-cfg": "hunyuanvideo"}.get(name, name)


def checkpoints_of(engine: Engine, request, every: int = 1) -> tuple[np.ndarray, dict[int, Checkpoint]]:
    """Run the request taking checkpoints; its frames and each checkpoint, by step, read back from its bytes."""
    taken: list[Checkpoint] = []
    frames = engine.submit(request, checkpoint_every=every, on_checkpoint=taken.append).result(timeout=120).frames
    return frames, {c.step: Checkpoint.from_bytes(c.to_bytes()) for c in taken}


@pytest.fixture(scope="module")
def fresh(specs):
    """name -> a second engine of the model, never used before the resume: nothing carries over but the bytes."""
    made: dict[str, Engine] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Engine:
            made[name] = Engine(specs[name], output="float32")
            self[name] = made[name]
            return made[name]

    yield Lazy()
    for engine in made.values():
        engine.close()


@pytest.mark.parametrize("name", ALL)
def test_a_request_resumed_in_a_fresh_engine_gives_the_frames_of_an_uninterrupted_run(
    name, engines, fresh, make_request
):
    request = make_request(family_of(name), **unseen_prompts(name), num_inference_steps=STEPS, seed=5)
    uninterrupted = engines[name].generate([request])[0].frames
    frames, checkpoints = checkpoints_of(engines[name], request)
    assert np.array_equal(frames, uninterrupted)  # taking checkpoints changes nothing
    assert sorted(checkpoints) == list(range(1, STEPS))  # none after the last step: nothing left to resume

    for k in (1, 3):
        progress: list[tuple[int, int]] = []
        result = fresh[name].submit(request, lambda s, n, p=progress: p.append((s, n)), resume_from=checkpoints[k])
        resumed = result.result(timeout=120)
        assert np.array_equal(resumed.frames, uninterrupted), (name, k)
        assert resumed.stats.resumed_from_step == k
        assert resumed.stats.steps_computed == STEPS  # counters carried over from the checkpoint
        assert progress == [(step, STEPS) for step in range(k, STEPS + 1)]  # progress goes on from step k


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_checkpoint_taken_in_a_mixed_batch_resumes_inside_another_mixed_batch(family, engines, fresh, make_request):
    probe = make_request(family, "probe", prompt="a bird over the sea", num_inference_steps=STEPS, seed=11)
    alone = engines[family].generate([probe])[0].frames
    mates = [
        make_request(family, "long", prompt="a horse", num_inference_steps=8, seed=5),
        make_request(family, "other", prompt="snow", negative_prompt="rain", guidance_scale=2.0, seed=6),
    ]
    taken: list[Checkpoint] = []
    futures = [engines[family].submit(r) for r in mates]
    engines[family].submit(probe, checkpoint_every=2, on_checkpoint=taken.append).result(timeout=120)
    for future in futures:
        future.result(timeout=120)
    checkpoint = next(c for c in taken if c.step == 2)
    assert max(checkpoint.stats["batch_sizes"].tolist()) > 1  # it was taken inside a batch

    others = [fresh[family].submit(r) for r in mates]
    resumed = fresh[family].submit(probe, resume_from=Checkpoint.from_bytes(checkpoint.to_bytes())).result(120)
    for future in others:
        future.result(timeout=120)
    assert max(resumed.stats.batch_sizes[2:]) > 1  # and resumed inside one
    assert np.abs(resumed.frames - alone).max() <= TOLERANCE


@pytest.mark.parametrize(
    "cache", [{"policy": "taylorseer", "interval": 3}, {"policy": "first_block", "threshold": 0.2}]
)
def test_approximate_cache_state_resumes_too(cache, engines, fresh, make_request):
    request = make_request("wan", **unseen_prompts(cache["policy"]), num_inference_steps=10, cache=cache)
    uninterrupted = engines["wan"].generate([request])[0]
    assert uninterrupted.stats.steps_reused > 0  # the cache really served steps
    _, checkpoints = checkpoints_of(engines["wan"], request)
    for k in (4, 7):
        resumed = fresh["wan"].submit(request, resume_from=checkpoints[k]).result(timeout=120)
        assert np.array_equal(resumed.frames, uninterrupted.frames), k
        assert resumed.stats.steps_reused == uninterrupted.stats.steps_reused


def test_a_checkpoint_moves_between_one_process_and_a_layer_split(specs, engines, make_request):
    request = make_request("wan", **unseen_prompts("a layer split"), num_inference_steps=STEPS, seed=9)
    uninterrupted = engines["wan"].generate([request])[0].frames
    _, single_checkpoints = checkpoints_of(engines["wan"], request)
    split = Engine(replace(specs["wan"], layer_split=2), output="float32")
    try:
        on_split = split.submit(request, resume_from=single_checkpoints[2]).result(timeout=120)
        split_frames, split_checkpoints = checkpoints_of(split, request)
    finally:
        split.close()
    back = engines["wan"].submit(request, resume_from=split_checkpoints[4]).result(timeout=120)
    # Exact up to the split's own difference from one process (0.0 measured; test_layer_split allows 1e-6).
    assert np.abs(on_split.frames - uninterrupted).max() <= 1e-6
    assert np.abs(back.frames - split_frames).max() <= 1e-6


def test_a_checkpoint_is_refused_for_any_other_request_or_bytes(engines, make_request):
    request = make_request("wan", num_inference_steps=STEPS)
    _, checkpoints = checkpoints_of(engines["wan"], request)
    for other in (
        replace(request, seed=request.seed + 1),
        replace(request, prompt="a dog"),
        replace(request, num_inference_steps=STEPS + 1),
        replace(request, guidance_scale=2.0),
        replace(request, cache={"policy": "taylorseer"}),
    ):
        with pytest.raises(CheckpointMismatch):
            engines["wan"].submit(other, resume_from=checkpoints[2])
    with pytest.raises(CheckpointMismatch):
        engines["cogvideox"].submit(make_request("cogvideox", num_inference_steps=STEPS), resume_from=checkpoints[2])
    # Only the request id may differ: a re-delivered job is the same request.
    same = engines["wan"].submit(replace(request, id="again"), resume_from=checkpoints[2]).result(timeout=120)
    assert same.stats.resumed_from_step == 2
    for data in (b"", b"not a checkpoint", checkpoints[2].to_bytes()[:-100]):
        with pytest.raises(CheckpointMismatch):
            Checkpoint.from_bytes(data)


def test_a_failing_checkpoint_callback_only_logs(engines, make_request, caplog):
    request = make_request("wan", num_inference_steps=STEPS, seed=21)
    uninterrupted = engines["wan"].generate([request])[0].frames

    def broken(checkpoint: Checkpoint) -> None:
        raise OSError("bucket unreachable")

    result = engines["wan"].submit(request, checkpoint_every=2, on_checkpoint=broken).result(timeout=120)
    assert np.array_equal(result.frames, uninterrupted)
    assert sum("checkpoint of request" in r.getMessage() for r in caplog.records) == 2  # steps 2 and 4
