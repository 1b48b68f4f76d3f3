"""What callers see while a request runs: progress, cancellation, concurrency, limits and shutdown.

These use tiny Wan; the mechanics are the engine's own and the same for every family.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from engine import Engine, EngineError, RequestCanceled


@pytest.fixture(scope="module")
def engine(specs):
    with Engine(specs["wan"]) as engine:
        yield engine


def test_progress_is_reported_after_every_step_in_order(engine, make_request):
    seen = []
    result = engine.submit(make_request("wan", num_inference_steps=3), lambda i, n: seen.append((i, n))).result(60)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert result.stats.steps_computed == 3


def test_frames_are_uint8_frames_by_height_by_width_by_rgb(engine, make_request):
    result = engine.generate([make_request("wan", num_frames=5, width=48, fps=12)])[0]
    assert result.frames.dtype == np.uint8
    assert result.frames.shape == (5, 32, 48, 3)
    assert result.fps == 12
    stats = result.stats.as_dict()
    assert stats["steps_computed"] == 4 and stats["seconds_running"] > 0


def test_a_canceled_request_stops_before_its_next_step_and_raises_request_canceled(engine, make_request):
    steps = []
    request = make_request("wan", "to-cancel", num_inference_steps=6)

    def cancel_at_two(step, total):
        steps.append(step)
        if step == 2:
            assert engine.cancel("to-cancel")

    future = engine.submit(request, cancel_at_two)
    survivor = engine.submit(make_request("wan", "survivor", num_inference_steps=6))
    with pytest.raises(RequestCanceled):
        future.result(60)
    assert steps == [1, 2]
    assert survivor.result(60).stats.steps_computed == 6


def test_a_queued_request_can_be_canceled_before_it_starts(specs, make_request):
    with Engine(specs["wan"], background=False) as idle:
        future = idle.submit(make_request("wan", "queued"))
        assert idle.cancel("queued") is True
        with pytest.raises(RequestCanceled):
            future.result(1)
        assert idle.cancel("queued") is False
        assert idle.cancel("never-seen") is False


def test_many_threads_can_submit_at_once_and_share_forwards(engine, make_request):
    requests = [make_request("wan", f"t{i}", prompt=f"a cat number {i}", seed=i) for i in range(8)]
    start = threading.Barrier(len(requests))

    def submit(request):
        start.wait()
        return engine.submit(request).result(60)

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(submit, requests))
    assert [r.request_id for r in results] == [r.id for r in requests]
    assert max(max(r.stats.batch_sizes) for r in results) > 1


def test_rows_per_forward_and_running_requests_stay_within_the_configured_limits(specs, make_request):
    requests = [make_request("wan", f"l{i}", seed=i) for i in range(5)]  # CFG: two rows each
    with Engine(specs["wan"], max_rows=4, max_running=3) as limited:
        results = limited.generate(requests)
    assert all(size <= 2 for r in results for size in r.stats.batch_sizes)
    assert results[-1].stats.seconds_queued > results[0].stats.seconds_queued  # the last two waited


def test_identical_prompts_are_encoded_once(specs, make_request):
    with Engine(specs["wan"], background=False) as fresh:
        encoded = []
        original = fresh.adapter.encode_prompts

        def counting(prompts):
            encoded.extend(prompts)
            return original(prompts)

        fresh.adapter.encode_prompts = counting
        fresh.generate([make_request("wan", f"s{i}", prompt="the same prompt", seed=i) for i in range(4)])
        fresh.generate([make_request("wan", "again", prompt="the same prompt")])
    assert sorted(encoded) == ["", "the same prompt"]  # the empty negative prompt, too, once


def test_close_fails_what_is_still_queued_and_refuses_new_work(specs, make_request):
    idle = Engine(specs["wan"], background=False)
    future = idle.submit(make_request("wan"))
    idle.close()
    with pytest.raises(RequestCanceled):
        future.result(1)
    with pytest.raises(EngineError):
        idle.submit(make_request("wan"))


@pytest.mark.parametrize(("wait", "calls"), [(2, 1), (0, 2)])
def test_a_finished_video_waits_a_bounded_number_of_steps_to_share_a_vae_call(wait, calls, specs, make_request):
    with Engine(specs["wan"], background=False, decode_wait_steps=wait) as fresh:
        decoded = []
        original = fresh.adapter.decode

        def counting(latents, seqs):
            decoded.append([s.id for s in seqs])
            return original(latents, seqs)

        fresh.adapter.decode = counting
        fresh.generate([make_request("wan", "short", num_inference_steps=3), make_request("wan", "long")])
    assert len(decoded) == calls


def test_a_model_directory_that_is_missing_raises_model_unavailable(specs, tmp_path):
    from dataclasses import replace

    from engine import ModelUnavailable

    with pytest.raises(ModelUnavailable):
        Engine(replace(specs["wan"], path=str(tmp_path / "nowhere")))


def test_a_forward_that_fails_fails_only_the_requests_it_held(specs, make_request):
    # max_rows=2: each guided request fills a packed forward of its own.
    with Engine(specs["wan"], background=False, max_rows=2) as fresh:
        packed = fresh.adapter.packed_forward(fresh.adapter.transformer)
        original = packed.embed

        def fail_wide_videos(rows):
            if rows[0].latents.shape[-1] == 48 // fresh.adapter.pipe.vae_scale_factor_spatial:
                raise RuntimeError("out of memory")
            return original(rows)

        packed.embed = fail_wide_videos
        wide = fresh.submit(make_request("wan", "wide", width=48))
        narrow = fresh.submit(make_request("wan", "narrow"))
        while not (wide.done() and narrow.done()):
            fresh.step()
    with pytest.raises(RuntimeError, match="out of memory"):
        wide.result()
    assert narrow.result().stats.steps_computed == 4


def test_a_prompt_that_breaks_text_encoding_fails_only_its_own_request(specs, make_request):
    with Engine(specs["wan"], background=False) as fresh:
        original = fresh.adapter.encode_prompts

        def refuse_poison(prompts):
            if any("poison" in p for p in prompts):
                raise IndexError("index out of range in self")
            return original(prompts)

        fresh.adapter.encode_prompts = refuse_poison
        mates = [fresh.submit(make_request("wan", p, prompt=f"a {p} in the rain")) for p in ("cat", "dog")]
        poison = fresh.submit(make_request("wan", "poison", prompt="a poison apple"))
        while not all(f.done() for f in [*mates, poison]):
            fresh.step()
    with pytest.raises(IndexError):
        poison.result()
    assert [m.result().stats.steps_computed for m in mates] == [4, 4]
