"""Layer split over 2 gloo processes on CPU: the same frames as one process, per family, single and mixed batches.

Also: about half the block parameters per stage, step caching through the split, a killed stage failing only its
in-flight request (the engine restarts the stages and serves the next), and shutdown ending every stage process.
One split engine per family for the whole module: spawning a stage imports torch and diffusers (seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine import Engine
from engine.layer_split import StageFailed

EXACT = 1e-6  # max abs difference on float32 frames in [0, 1]


def _two_block_variant(source: Path, target: Path) -> Path:
    """The tiny pipeline with a 2-block transformer (CogVideoX's and LTX's tiny ones have 1 block: nothing to split)."""
    import diffusers
    import torch

    if not (target / "model_index.json").exists():
        shutil.copytree(source, target, dirs_exist_ok=True)
        folder = target / "transformer"
        config = json.loads((folder / "config.json").read_text())
        config["num_layers"] = 2
        torch.manual_seed(0)
        model = getattr(diffusers, config["_class_name"]).from_config(config)
        for old in folder.glob("*.safetensors*"):
            old.unlink()
        model.save_pretrained(folder)
    return target


@pytest.fixture(scope="module")
def split_specs(specs, model_dir):
    out = dict(specs)
    for family in ("cogvideox", "ltx"):
        path = _two_block_variant(model_dir / "tiny" / family, model_dir / "tiny" / f"{family}-2blocks")
        out[family] = replace(specs[family], name=f"tiny-{family}-2blocks", path=str(path))
    return out


@pytest.fixture(scope="module")
def pairs(split_specs):
    """family -> (single-process engine, 2-stage engine), made on first use, closed at the end of the module."""
    made = {}

    class Lazy(dict):
        def __missing__(self, family):
            spec = split_specs[family]
            made[family] = (
                Engine(spec, output="float32"),
                Engine(replace(spec, layer_split=2), output="float32"),
            )
            self[family] = made[family]
            return made[family]

    yield Lazy()
    for single, split in made.values():
        single.close()
        split.close()


def _mixed(family, make_request):
    return [
        make_request(family, "a", prompt="a red car", num_inference_steps=3, seed=1),
        make_request(family, "b", prompt="a dog", guidance_scale=1.0, num_inference_steps=4, seed=2),
        make_request(family, "c", width=64 if family == "ltx" else 48, guidance_scale=3.0, seed=3),
    ]


def _assert_same(expected, got):
    for want, have in zip(expected, got, strict=True):
        assert have.frames.shape == want.frames.shape
        assert np.abs(have.frames - want.frames).max() <= EXACT, want.request_id


def test_wan_split_over_two_processes_equals_one_process(pairs, make_request):
    single, split = pairs["wan"]
    one = [make_request("wan", "one", negative_prompt="blurry")]
    _assert_same(single.generate(one), split.generate(one))
    mixed = _mixed("wan", make_request)
    results = split.generate(mixed)
    _assert_same(single.generate(mixed), results)
    # Wan packs: the requests of two shapes travel through the stages as one packed micro-batch.
    assert results[0].stats.batch_sizes[0] == 3


def test_each_stage_holds_about_half_the_block_parameters(pairs):
    _, split = pairs["wan"]
    runner = split.runner
    (plan,) = runner.plans
    assert [len(r) for r in plan.ranges] == [1, 1]
    assert plan.block_params[0] == plan.block_params[1]
    stats = runner.stage_stats()
    assert [s["stage"] for s in stats] == [0, 1]
    # Stage 1 loaded only its block and the output head from the checkpoint; stage 0 freed what it does not own.
    assert stats[1]["param_bytes"] == plan.stage_params[1] * 4
    assert stats[0]["param_bytes"] == plan.stage_params[0] * 4
    assert stats[1]["pid"] != os.getpid()


@pytest.mark.parametrize("family", ["cogvideox", "hunyuanvideo", "mochi", "ltx", "wan2.2"])
def test_every_family_split_equals_one_process(family, pairs, make_request):
    single, split = pairs[family]
    requests = _mixed("wan" if family == "wan2.2" else family, make_request)
    _assert_same(single.generate(requests), split.generate(requests))


def test_step_cache_through_the_split_skips_the_pipeline_for_forecast_steps(pairs, make_request):
    single, split = pairs["wan"]
    cache = {"policy": "taylorseer", "interval": 2, "warmup": 2, "order": 1}
    requests = [
        make_request("wan", "cached", num_inference_steps=8, cache=cache),
        make_request("wan", "exact", prompt="a dog", num_inference_steps=8, seed=3),
    ]
    before = split.runner.forwards
    results = split.generate(requests)
    _assert_same(single.generate(requests), results)
    assert results[0].stats.steps_reused > 0
    # Forecast steps never entered the pipeline: the exact request ran those forwards alone.
    assert 1 in results[1].stats.batch_sizes
    assert split.runner.forwards - before == 8


def test_a_killed_stage_fails_its_request_within_seconds_and_the_engine_serves_the_next(pairs, make_request):
    _, split = pairs["wan"]
    (victim,) = split.runner.stage_pids()

    def kill_at_step_two(step, total):
        if step == 2:
            os.kill(victim, signal.SIGKILL)

    future = split.submit(make_request("wan", "doomed", num_inference_steps=50), on_progress=kill_at_step_two)
    start = time.monotonic()
    with pytest.raises(StageFailed, match="stage"):
        future.result(timeout=30)
    assert time.monotonic() - start < 10
    result = split.generate([make_request("wan", "next")])[0]
    assert result.stats.steps_computed == 4
    assert split.runner.stage_pids() != [victim]


def test_close_ends_every_stage_process(split_specs, make_request):
    engine = Engine(replace(split_specs["hunyuanvideo"], layer_split=2), output="float32")
    pids = engine.runner.stage_pids()
    engine.generate([make_request("hunyuanvideo", "x", num_inference_steps=2)])
    engine.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
