"""Packed forwards: requests of any frames, size, prompt length, step count and guidance share one forward per
iteration, and every request's frames equal diffusers' pipeline alone and the same request alone in the engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import Engine
from engine.attention import Segments, cross_attention, self_attention
from engine.packing import PackedRow
from engine.reference import load_pipeline, run_pipeline

TOLERANCE = 1e-5  # float32, max abs difference on decoded frames in [0, 1]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def test_self_attention_over_packed_rows_is_each_rows_own_attention():
    torch.manual_seed(0)
    segments = Segments((5, 7, 7, 3))  # two equal neighbours run as one call, the others alone
    q, k, v = (torch.randn(1, segments.total, 2, 8) for _ in range(3))
    out = self_attention(q, k, v, segments)
    for row in range(len(segments)):
        s = segments.slice(row)
        assert torch.allclose(out[:, s], _sdpa(q[:, s], k[:, s], v[:, s]), atol=1e-6)


def test_cross_attention_gives_each_row_its_own_keys_and_one_biased_key_stands_for_its_repeats():
    torch.manual_seed(1)
    segments = Segments((4, 6))
    q = torch.randn(1, segments.total, 2, 8)
    keys = [torch.randn(1, 3, 2, 8), torch.randn(1, 5, 2, 8)]
    values = [torch.randn(1, 3, 2, 8), torch.randn(1, 5, 2, 8)]
    # Row 1's last key stands for 4 identical keys (as Wan's zero padding positions do).
    bias = torch.zeros(5)
    bias[-1] = math.log(4)
    out = cross_attention(q, segments, keys, values, [None, bias])
    assert torch.allclose(out[:, segments.slice(0)], _sdpa(q[:, segments.slice(0)], keys[0], values[0]), atol=1e-6)
    repeated_k = torch.cat([keys[1], keys[1][:, -1:].expand(1, 3, 2, 8)], dim=1)
    repeated_v = torch.cat([values[1], values[1][:, -1:].expand(1, 3, 2, 8)], dim=1)
    expected = _sdpa(q[:, segments.slice(1)], repeated_k, repeated_v)
    assert torch.allclose(out[:, segments.slice(1)], expected, atol=1e-6)


def test_wan_packed_forward_equals_the_diffusers_model_on_each_row_alone(engines):
    adapter = engines["wan"].adapter
    model = adapter.transformer
    packed = adapter.packed_forward(model)
    texts = adapter.encode_prompts(["a cat", "a red car driving through the rain at night", ""])
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 4, 4), (16, 2, 6, 4), (16, 1, 4, 8)]
    rows = [
        PackedRow(latents=torch.randn(shape, generator=generator), timestep=torch.tensor(t), text=text)
        for shape, t, text in zip(shapes, (999.0, 500.0, 3.0), texts, strict=True)
    ]
    rows.append(PackedRow(latents=rows[0].latents, timestep=rows[0].timestep, text=texts[2]))  # an uncond row
    with torch.no_grad():
        state = packed.embed(rows)
        assert state.tokens.lengths == (12, 12, 8, 12)
        for index in range(packed.num_blocks):
            state = packed.block(index, state)
        outputs = packed.head(state)
        for row, output in zip(rows, outputs, strict=True):
            alone = model(
                hidden_states=row.latents[None],
                timestep=row.timestep[None],
                encoder_hidden_states=row.text.embeds,
                return_dict=False,
            )[0]
            assert output.shape == alone.shape
            assert (output - alone).abs().max() <= 1e-5


def test_ltx_packed_forward_equals_the_diffusers_model_on_each_row_alone(engines, make_request):
    adapter = engines["ltx"].adapter
    model = adapter.transformer
    packed = adapter.packed_forward(model)
    texts = adapter.encode_prompts(["a cat", "a red car driving through the rain at night"])
    generator = torch.Generator().manual_seed(0)
    requests = [
        make_request("ltx", "a", num_frames=9, height=32, width=64, fps=8),
        make_request("ltx", "b", num_frames=17, height=32, width=32, fps=24),
    ]
    rows = []
    for request, text, t in zip(requests, texts, (900.0, 40.0), strict=True):
        f, h, w = adapter.latent_dims(request)
        latents = torch.randn(1, f * h * w, model.config.in_channels, generator=generator)
        seq = type("Row", (), {"request": request})()
        rows.append(PackedRow(latents, torch.tensor(t), text, positions=adapter.row_positions(seq)))
    with torch.no_grad():
        state = packed.embed(rows)
        for index in range(packed.num_blocks):
            state = packed.block(index, state)
        for row, output in zip(rows, packed.head(state), strict=True):
            f, h, w, scale = row.positions
            alone = model(
                hidden_states=row.latents,
                encoder_hidden_states=row.text.embeds,
                timestep=row.timestep[None],
                encoder_attention_mask=row.text.mask,
                num_frames=f,
                height=h,
                width=w,
                rope_interpolation_scale=scale,
                return_dict=False,
            )[0]
            assert output.shape == alone.shape
            assert (output - alone).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def pipelines(specs):
    made = {}

    def get(family):
        if family not in made:
            made[family] = load_pipeline(specs[family])
        return made[family]

    return get


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_requests_of_every_shape_share_one_forward_and_each_equals_diffusers_and_itself_alone(
    family, specs, pipelines, mixed_requests
):
    *requests, late = mixed_requests(family)
    engine = Engine(specs[family], output="float32", background=False)
    try:
        futures = [engine.submit(r) for r in requests]
        engine.step()
        engine.step()
        futures.append(engine.submit(late))  # joins mid-way; b leaves after its third step
        while not all(f.done() for f in futures):
            engine.step()
        results = [f.result() for f in futures]
        alone = [engine.generate([r])[0] for r in [*requests, late]]
    finally:
        engine.close()
    # One forward per iteration held every request still denoising.
    assert results[0].stats.batch_sizes == [3, 3, 4, 3]
    assert results[1].stats.batch_sizes == [3, 3, 4]
    assert results[2].stats.batch_sizes == [3, 3, 4, 3, 2]
    assert results[3].stats.batch_sizes == [4, 3, 2, 1]
    assert results[0].stats.forward_tokens[0] > alone[0].stats.forward_tokens[0]
    for request, result, single in zip([*requests, late], results, alone, strict=True):
        expected = run_pipeline(pipelines(family), specs[family], request)
        assert result.frames.shape == expected.shape
        assert np.abs(result.frames - expected).max() <= TOLERANCE, request.id
        assert np.abs(result.frames - single.frames).max() <= TOLERANCE, request.id


def test_what_exceeds_the_token_budget_runs_in_a_further_forward_and_a_larger_request_runs_alone(specs, make_request):
    small = [make_request("wan", f"s{i}", prompt="a dog", seed=i, num_inference_steps=3) for i in range(3)]
    large = make_request("wan", "large", num_frames=17, height=64, width=64, num_inference_steps=3, seed=5)
    with Engine(specs["wan"], output="float32", background=False) as engine:
        per_small = engine.generate([small[0]])[0].stats.forward_tokens[0]
        per_large = engine.generate([large])[0].stats.forward_tokens[0]
    assert per_large > 2 * per_small
    budget = 2 * per_small  # two small requests fit; the large one fits nowhere
    with Engine(specs["wan"], output="float32", background=False, max_tokens=budget) as engine:
        results = engine.generate([*small, large])
    assert results[0].stats.batch_sizes == results[1].stats.batch_sizes == [2, 2, 2]  # the oldest two together
    assert results[2].stats.batch_sizes == [1, 1, 1]  # the further forward of the same iteration
    assert results[3].stats.batch_sizes == [1, 1, 1] and results[3].stats.forward_tokens == [per_large] * 3
    assert all(t <= budget for r in results[:3] for t in r.stats.forward_tokens)


# Cross-attention (Wan, LTX) and joint-attention families (CogVideoX, Mochi, HunyuanVideo with unconditional rows).
@pytest.mark.parametrize("name", ["wan", "ltx", "cogvideox", "mochi", "hunyuanvideo-true-cfg"])
def test_a_checkpoint_taken_in_a_packed_forward_resumes_among_mates_of_other_shapes(name, specs, mixed_requests):
    from engine.checkpoint import Checkpoint

    *mates, probe = mixed_requests(name)
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
