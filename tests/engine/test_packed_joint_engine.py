"""Through the engine, CogVideoX, Mochi and HunyuanVideo requests of different shapes share one packed forward.

Frames, sizes, prompts, step counts and guidance (with and without CFG rows) differ; a request joins mid-way and
others leave. Every request's frames equal diffusers' pipeline alone and the same request alone in the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import Engine
from engine.reference import load_pipeline, run_pipeline

TOLERANCE = 1e-5  # float32, max abs difference on decoded frames in [0, 1]

# Per family: a second frame count and size that its rules allow.
OTHER_FRAMES = {"cogvideox": 17, "mochi": 13, "hunyuanvideo": 5}


def family_of(name: str) -> str:
    return name.split("-")[0]  # "cogvideox-dpm" and "hunyuanvideo-true-cfg" are variants of their family


def mixed_requests(name: str, make_request) -> list:
    """Three requests of other frames, sizes, prompts, steps and guidance, and one that joins after two steps."""
    family = family_of(name)
    # An empty negative prompt pools to NaN in HunyuanVideo's true CFG (diffusers too): say something.
    negative = {"negative_prompt": "low quality"} if family == "hunyuanvideo" else {}
    return [
        make_request(family, "a", prompt="a cat running on the beach at sunset", seed=1, **negative),
        make_request(
            family,
            "b",
            num_frames=OTHER_FRAMES[family],
            width=48,
            prompt="rain",
            guidance_scale=1.0,  # no unconditional row
            num_inference_steps=3,
            seed=2,
            **negative,
        ),
        make_request(family, "c", height=48, guidance_scale=3.0, num_inference_steps=5, seed=3, **negative),
        make_request(family, "late", num_frames=OTHER_FRAMES[family], prompt="snow", seed=9, **negative),
    ]


@pytest.mark.parametrize(
    "name",
    [
        "cogvideox",
        "cogvideox-dpm",  # CogVideoX 1.5's DPM scheduler and dynamic CFG
        "mochi",
        "hunyuanvideo",
        "hunyuanvideo-true-cfg",  # unconditional rows too
    ],
)
def test_requests_of_every_shape_share_one_forward_and_each_equals_diffusers_and_itself_alone(
    name, specs, make_request
):
    spec = specs[name]
    *first, late = mixed_requests(name, make_request)
    engine = Engine(spec, output="float32", background=False)
    try:
        assert engine.adapter.packs
        futures = [engine.submit(r) for r in first]
        engine.step()
        engine.step()
        futures.append(engine.submit(late))  # joins mid-way; b leaves after its third step
        while not all(f.done() for f in futures):
            engine.step()
        results = [f.result() for f in futures]
        alone = [engine.generate([r])[0] for r in [*first, late]]
    finally:
        engine.close()

    # One forward per iteration held every request still denoising, whatever its shape, text or guidance.
    assert results[0].stats.batch_sizes == [3, 3, 4, 3]
    assert results[1].stats.batch_sizes == [3, 3, 4]
    assert results[2].stats.batch_sizes == [3, 3, 4, 3, 2]
    assert results[3].stats.batch_sizes == [4, 3, 2, 1]
    # The first forward's tokens are the three requests' own (video patches and text, every row).
    assert results[0].stats.forward_tokens[0] == sum(a.stats.forward_tokens[0] for a in alone[:3])

    pipe = load_pipeline(spec)
    for request, result, single in zip([*first, late], results, alone, strict=True):
        expected = run_pipeline(pipe, spec, request)
        assert result.frames.shape == expected.shape == single.frames.shape
        assert np.abs(result.frames - expected).max() <= TOLERANCE, request.id
        assert np.abs(result.frames - single.frames).max() <= TOLERANCE, request.id


@pytest.mark.parametrize("name", ["cogvideox", "mochi", "hunyuanvideo-true-cfg"])
def test_a_checkpoint_taken_in_a_packed_forward_resumes_among_mates_of_other_shapes(name, specs, make_request):
    from engine.checkpoint import Checkpoint

    *mates, probe = mixed_requests(name, make_request)
    with Engine(specs[name], output="float32", background=False) as engine:
        alone = engine.generate([probe])[0].frames
        taken: list[Checkpoint] = []
        futures = [engine.submit(r) for r in mates[:2]]
        futures.append(engine.submit(probe, checkpoint_every=2, on_checkpoint=taken.append))
        while not all(f.done() for f in futures):
            engine.step()
    checkpoint = Checkpoint.from_bytes(next(c for c in taken if c.step == 2).to_bytes())
    assert checkpoint.stats["batch_sizes"].tolist() == [3, 3]  # taken inside packed forwards of three shapes
    with Engine(specs[name], output="float32", background=False) as engine:
        futures = [engine.submit(mates[2]), engine.submit(probe, resume_from=checkpoint)]
        while not all(f.done() for f in futures):
            engine.step()
        resumed = futures[1].result()
    assert resumed.stats.batch_sizes[2:] == [2, 2]  # and resumed inside one with a mate of another shape
    assert np.abs(resumed.frames - alone).max() <= TOLERANCE
