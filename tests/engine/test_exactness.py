"""The engine computes what the diffusers pipelines compute: same components, seed and parameters, same frames.

And a request's frames do not depend on what it was batched with.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.families import FAMILIES
from engine.reference import load_pipeline, run_pipeline

TOLERANCE = 1e-5  # float32, max abs difference on decoded frames in [0, 1]

ALL = [*FAMILIES, "wan2.2", "cogvideox-dpm", "hunyuanvideo-true-cfg"]


def family_of(name: str) -> str:
    return {"wan2.2": "wan", "cogvideox-dpm": "cogvideox", "hunyuanvideo-true-cfg": "hunyuanvideo"}.get(name, name)


@pytest.fixture(scope="module")
def pipelines(specs):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_pipeline(specs[name])
        return cache[name]

    return get


def larger_shape(family: str) -> dict[str, int]:
    """A second valid shape per family: other frame count and width."""
    frames = {"wan": 5, "cogvideox": 17, "mochi": 13, "hunyuanvideo": 5, "ltx": 17}[family]
    return {"num_frames": frames, "width": 64 if family == "ltx" else 48}


@pytest.mark.parametrize("name", ALL)
def test_one_request_equals_the_diffusers_pipeline(name, specs, engines, pipelines, make_request):
    family = family_of(name)
    request = make_request(family, negative_prompt="blurry, low quality")
    result = engines[name].generate([request])[0]
    expected = run_pipeline(pipelines(name), specs[name], request)
    assert result.frames.shape == expected.shape == (request.num_frames, 32, 32, 3)
    assert np.abs(result.frames - expected).max() <= TOLERANCE


@pytest.mark.parametrize("name", ALL)
def test_every_request_of_a_mixed_batch_equals_the_diffusers_pipeline(name, specs, engines, pipelines, make_request):
    family = family_of(name)
    # The tiny Llama tokenizer encodes an empty prompt to no tokens, and HunyuanVideo's pooling then divides
    # by zero (diffusers' pipeline gives NaN too): under true CFG the negative prompt must say something.
    negative = "low quality" if name == "hunyuanvideo-true-cfg" else ""
    requests = [
        make_request(family, "a", prompt="a red car", num_inference_steps=3, seed=1, negative_prompt=negative),
        make_request(
            family, "b", prompt="a dog", guidance_scale=1.0, num_inference_steps=5, seed=2, negative_prompt=negative
        ),
        make_request(family, "c", **larger_shape(family), guidance_scale=3.0, seed=3, negative_prompt=negative),
        make_request(family, "d", prompt="a red car", num_inference_steps=3, seed=4, negative_prompt=negative),
    ]
    results = engines[name].generate(requests)
    for request, result in zip(requests, results, strict=True):
        expected = run_pipeline(pipelines(name), specs[name], request)
        assert result.frames.shape == expected.shape
        assert np.abs(result.frames - expected).max() <= TOLERANCE, request.id
    if name in ("cogvideox-dpm", "hunyuanvideo-true-cfg"):
        return  # batch sizes as for the family; these variants are here for their frames
    if engines[name].adapter.packs and name != "wan2.2":
        # One packed forward per iteration holds every request still denoising, whatever its shape or text.
        for result in results:
            running = [sum(r.num_inference_steps > k for r in requests) for k in range(len(result.stats.batch_sizes))]
            assert result.stats.batch_sizes == running, result.request_id
    elif name == "wan2.2":
        # Step counts set the timesteps, so b crosses to the low-noise expert at another step than a and d: one
        # packed forward per expert, so a's forwards are smaller while the others are on the other expert.
        sizes = results[0].stats.batch_sizes
        assert sizes[0] == len(requests) and min(sizes) < len(requests)
    else:
        # a and d (same shape) shared every forward with b while b's steps lasted.
        assert results[0].stats.batch_sizes == [3, 3, 3]
        assert results[1].stats.batch_sizes == [3, 3, 3, 1, 1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_request_gives_the_same_frames_alone_and_joining_a_running_batch_midway(family, engines, make_request):
    engine = engines[family]
    probe = make_request(family, "probe", prompt="a bird flying over the ocean", num_inference_steps=5, seed=11)
    alone = engine.generate([probe])[0].frames

    joined = threading.Event()
    futures = []

    def join_at_step_two(step: int, total: int) -> None:
        if step == 2 and not joined.is_set():
            joined.set()  # called from the engine loop: the probe enters between iterations
            futures.append(engine.submit(probe))

    others = [
        make_request(family, "long", prompt="a horse", num_inference_steps=6, seed=5),
        make_request(family, "other", prompt="snow storm", negative_prompt="rain", guidance_scale=2.0, seed=6),
    ]
    first = [engine.submit(others[0], on_progress=join_at_step_two), engine.submit(others[1])]
    for future in first:
        future.result(timeout=60)
    mixed = futures[0].result(timeout=60)
    assert max(mixed.stats.batch_sizes) > 1  # it really shared forwards with the others
    assert np.abs(mixed.frames - alone).max() <= TOLERANCE
