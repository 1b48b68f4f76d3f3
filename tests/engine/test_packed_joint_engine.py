"""Through the engine, CogVideoX, Mochi and HunyuanVideo requests of different shapes share one packed forward.

Frames, sizes, prompts, step counts and guidance (with and without CFG rows) differ; a request joins mid-way and
others leave. Every request's frames equal diffusers' pipeline alone and the same request alone in the engine.
(Their checkpoint-resume test is test_packing.py's, with Wan's and LTX's.)
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import Engine
from engine.reference import load_pipeline, run_pipeline

TOLERANCE = 1e-5  # float32, max abs difference on decoded frames in [0, 1]


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
    name, specs, mixed_requests
):
    spec = specs[name]
    *first, late = mixed_requests(name)
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
