"""Step caching: exact reuse changes nothing; approximate policies act per request, inside mixed batches, within
a quality bound; bad cache settings are refused naming the field.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.cache_policy import parse_cache
from engine.families import FAMILIES
from engine.registry import ModelRegistry
from engine.request import InvalidRequest

EXACT = 1e-6  # exact reuse on vs off, max abs difference on frames in [0, 1]
ALONE = 1e-5  # an uncached request's frames alone vs beside a cached one (batched matmuls differ in rounding)
MIN_PSNR = 35.0  # approximate policies vs uncached, same seed; tiny random weights: indicative only


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def uncached_engines(specs):
    """Engines of the same models with every exact reuse off: no prompt cache, no text K/V cache."""
    from engine import Engine

    made = {}

    def get(family):
        if family not in made:
            made[family] = Engine(specs[family], output="float32", text_cache_size=0, text_kv_cache=False)
        return made[family]

    yield get
    for engine in made.values():
        engine.close()


def counting(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exact_reuse_gives_the_same_frames_as_no_reuse(family, engines, uncached_engines, make_request):
    requests = [
        make_request(family, "a", prompt="a red car", negative_prompt="blurry", seed=1),
        make_request(family, "b", prompt="a dog", guidance_scale=1.0, seed=2),
        make_request(family, "c", prompt="a red car", negative_prompt="blurry", num_inference_steps=3, seed=3),
    ]
    engine = engines[family]
    cross = engine.adapter.text_kv_parts(engine.adapter.transformer)
    calls = handle = None
    if cross is not None:  # Wan, LTX: the text keys are projected once per request and row, not per step
        calls, handle = counting(cross[1][0].to_k)
    try:
        cached = engine.generate(requests)
    finally:
        if handle is not None:
            handle.remove()
    plain = uncached_engines(family).generate(requests)
    for request, a, b in zip(requests, cached, plain, strict=True):
        assert np.abs(a.frames - b.frames).max() <= EXACT, request.id
        assert a.stats.steps_reused == 0 and a.stats.steps_computed == request.num_inference_steps
    if family in ("wan", "ltx"):
        assert len(calls) == 5  # a: 2 rows, b: 1, c: 2; steps 4 + 4 + 3 would have been 19 calls
    # The prompt cache served the repeated prompts: one embedding object for a and c.
    assert engine.texts.get("a red car") is not None


POLICIES = [
    ("wan", {"policy": "first_block", "threshold": 0.2}),
    ("mochi", {"policy": "first_block", "threshold": 0.5}),
    ("hunyuanvideo", {"policy": "first_block", "threshold": 0.5}),
    ("wan", {"policy": "taylorseer", "interval": 3}),
    ("mochi", {"policy": "taylorseer"}),
    ("cogvideox", {"policy": "taylorseer", "interval": 2}),
    ("ltx", {"policy": "taylorseer", "interval": 2}),
]


@pytest.mark.parametrize(("family", "cache"), POLICIES, ids=[f"{f}-{c['policy']}" for f, c in POLICIES])
def test_an_approximate_policy_reuses_steps_and_stays_close_to_the_uncached_frames(
    family, cache, engines, make_request
):
    plain = make_request(family, "plain", num_inference_steps=10)
    cached = make_request(family, "cached", num_inference_steps=10, cache=cache)
    base, approx = engines[family].generate([plain]), engines[family].generate([cached])
    base, approx = base[0], approx[0]
    assert approx.stats.steps_reused > 0  # the policy acted: some steps came from its cache ...
    assert approx.stats.steps_computed + approx.stats.steps_reused == 10
    assert approx.stats.block_evaluations < base.stats.block_evaluations  # ... and fewer blocks ran
    assert approx.stats.as_dict()["cache"]["policy"] == cache["policy"]
    assert np.abs(approx.frames - base.frames).max() > 1e-4  # really approximate: the frames changed ...
    assert psnr(approx.frames, base.frames) >= MIN_PSNR  # ... within the bound


def test_a_cached_request_in_a_mixed_batch_leaves_the_uncached_ones_unchanged(engines, make_request):
    engine = engines["wan"]
    guided = make_request("wan", "guided", prompt="a horse", num_inference_steps=8, seed=3)
    unguided = make_request("wan", "unguided", prompt="rain", guidance_scale=1.0, num_inference_steps=8, seed=4)
    alone = [engine.generate([r])[0].frames for r in (guided, unguided)]
    first_block = make_request("wan", "fb", num_inference_steps=8, seed=5, cache={"policy": "first_block"})
    taylor = make_request("wan", "ts", num_inference_steps=8, seed=6, cache={"policy": "taylorseer", "interval": 3})
    results = engine.generate([guided, first_block, unguided, taylor])
    for expected, result in zip(alone, (results[0], results[2]), strict=True):
        assert np.abs(result.frames - expected).max() <= ALONE
        assert result.stats.steps_computed == 8 and result.stats.steps_reused == 0
    fb, ts = results[1].stats, results[3].stats
    # first_block shared every forward with the others but skipped the tail blocks on some steps;
    # taylorseer left the forward on its forecast steps (fewer forwards, the batch of three without it).
    assert fb.steps_reused > 0 and fb.batch_sizes == [4] * 2 + [3, 3, 4, 3, 3, 4]
    assert ts.steps_reused == 4 and len(ts.batch_sizes) == 4


def test_a_first_block_request_beside_others_in_a_joint_attention_family_leaves_them_unchanged(engines, make_request):
    # Mochi's blocks return (video, text) pairs: the rows that go on must get both back in place.
    engine = engines["mochi"]
    other = make_request("mochi", "other", prompt="a horse", num_inference_steps=8, seed=3)
    alone = engine.generate([other])[0].frames
    cached = make_request(
        "mochi", "fb", num_inference_steps=8, seed=5, cache={"policy": "first_block", "threshold": 0.5}
    )
    mixed, approx = engine.generate([other, cached])
    assert np.abs(mixed.frames - alone).max() <= ALONE
    assert approx.stats.steps_reused > 0 and max(approx.stats.batch_sizes) == 2


@pytest.mark.parametrize(
    ("cache", "field"),
    [
        ("fast", "cache"),
        ({"policy": "magic"}, "cache.policy"),
        ({"policy": "first_block", "threshold": 0}, "cache.threshold"),
        ({"policy": "first_block", "threshold": 2.0}, "cache.threshold"),
        ({"policy": "first_block", "threshold": "high"}, "cache.threshold"),
        ({"policy": "first_block", "interval": 2}, "cache.interval"),
        ({"policy": "taylorseer", "interval": 1}, "cache.interval"),
        ({"policy": "taylorseer", "interval": 2.5}, "cache.interval"),
        ({"policy": "taylorseer", "order": 3}, "cache.order"),
        ({"policy": "none", "threshold": 0.1}, "cache.threshold"),
    ],
)
def test_a_bad_cache_setting_is_refused_naming_the_field(cache, field, engines, registry, make_request):
    with pytest.raises(InvalidRequest) as caught:
        parse_cache(cache)
    assert caught.value.field == field
    with pytest.raises(InvalidRequest) as caught:
        registry.get("tiny-wan").resolve("r", {"prompt": "a cat", "cache": cache})
    assert caught.value.field == field
    with pytest.raises(InvalidRequest):
        engines["wan"].submit(make_request("wan", cache=cache))


def test_the_policy_defaults_are_applied_and_recorded(registry):
    request = registry.get("tiny-wan").resolve("r", {"prompt": "a cat", "cache": {"policy": "taylorseer"}})
    assert request.cache == {"policy": "taylorseer", "interval": 2, "warmup": 2, "order": 1}
    assert registry.get("tiny-wan").resolve("r", {"prompt": "a cat"}).cache is None
    assert parse_cache({"policy": "first_block"}).threshold == 0.2


def test_a_model_may_set_its_own_defaults_because_good_thresholds_are_model_specific(registry, tmp_path):
    spec = registry.get("tiny-wan")
    own = replace(spec, options={**spec.options, "cache_defaults": {"first_block": {"threshold": 0.1}}})
    assert own.resolve("r", {"prompt": "a cat", "cache": {"policy": "first_block"}}).cache["threshold"] == 0.1
    given = {"policy": "first_block", "threshold": 0.3}
    assert own.resolve("r", {"prompt": "a cat", "cache": given}).cache["threshold"] == 0.3
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.m]\nfamily = "wan"\npath = "tiny/wan"\n'
        "options = { cache_defaults = { first_block = { threshold = 5 } } }\n"
    )
    with pytest.raises(ValueError, match="cache_defaults.first_block"):
        ModelRegistry.from_file(models)
