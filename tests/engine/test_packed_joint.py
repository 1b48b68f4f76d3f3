"""Packed forwards of the joint-attention families equal diffusers' transformer run on each row alone.

CogVideoX, Mochi and HunyuanVideo attend over `[text; video]` per row. Rows of different frame counts, sizes,
prompts, timesteps (and HunyuanVideo guidance) share one packed forward; each row's output must be what the
diffusers model computes for that row by itself, in float32, to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from engine.families import adapter_class
from engine.families.base import TextEmbedding
from engine.packing import PackedRow

TOLERANCE = 1e-5
PROMPTS = ["a cat", "a red car driving in the city at night", "", "a dog running on the beach with a ball"]


@pytest.fixture(scope="module")
def adapters(specs):
    made = {}

    def get(family):
        if family not in made:
            made[family] = adapter_class(family).load(specs[family])
        return made[family]

    return get


def run_packed(packed, rows: list[PackedRow]) -> list[torch.Tensor]:
    state = packed.embed(rows)
    for index in range(packed.num_blocks):
        state = packed.block(index, state)
    return packed.head(state)


def assert_rows_equal(outputs: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(outputs) == len(expected)
    for row, (out, ref) in enumerate(zip(outputs, expected, strict=True)):
        assert out.shape == ref.shape, row
        assert (out - ref).abs().max().item() <= TOLERANCE, row


def seeded(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- CogVideoX ------------------------------------------------------------------------------------------


def cogvideox_variant(adapter, **overrides):
    """The tiny CogVideoX transformer's config with changes (rotary positions, 1.5's time patches), new weights."""
    from diffusers import CogVideoXTransformer3DModel

    config = {k: v for k, v in adapter.transformer.config.items() if not k.startswith("_")}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return CogVideoXTransformer3DModel(**{**config, **overrides}).eval()


@pytest.mark.parametrize("variant", ["sincos", "rotary", "1.5"])
@torch.no_grad()
def test_cogvideox_rows_of_different_shapes_equal_the_transformer_alone(variant, adapters):
    from engine.families.cogvideox import CogVideoXPackedForward

    adapter = adapters("cogvideox")
    pipe, model = adapter.pipe, adapter.transformer
    # latent (frames, height, width): 1.0 patches space only, 1.5 pairs of frames too
    shapes = [(3, 4, 4), (5, 2, 6), (1, 6, 2), (3, 4, 4)]
    if variant != "sincos":
        # 3-D rotary tables split the head dimension in three: the tiny model's 8 channels are too few.
        overrides = {"use_rotary_positional_embeddings": True, "attention_head_dim": 16}
        if variant == "1.5":
            overrides.update(patch_size_t=2, sample_width=16, sample_height=16)
            shapes = [(2, 4, 4), (4, 2, 6), (2, 6, 2)]
        model = cogvideox_variant(adapter, **overrides)
    texts = adapter.encode_prompts(PROMPTS[: len(shapes)])
    latents = [seeded((1, f, model.config.in_channels, h, w), i) for i, (f, h, w) in enumerate(shapes)]
    timesteps = torch.tensor([999, 500, 1, 250][: len(shapes)])  # DDIM's integer timesteps

    original = pipe.transformer
    pipe.transformer = model  # the pipeline's rotary tables read the transformer's config
    try:
        expected = []
        for i, (x, text) in enumerate(zip(latents, texts, strict=True)):
            f, _, h, w = x.shape[1:]
            s = pipe.vae_scale_factor_spatial
            rotary = None
            if variant != "sincos":
                rotary = pipe._prepare_rotary_positional_embeddings(h * s, w * s, f, x.device)
            kwargs = dict(encoder_hidden_states=text.embeds, timestep=timesteps[i : i + 1], image_rotary_emb=rotary)
            expected.append(model(hidden_states=x, **kwargs, return_dict=False)[0])
        packed = CogVideoXPackedForward(model)
        rows = [PackedRow(x, timesteps[i], text) for i, (x, text) in enumerate(zip(latents, texts, strict=True))]
        outputs = run_packed(packed, rows)
    finally:
        pipe.transformer = original
    assert_rows_equal(outputs, expected)


# --- Mochi ----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_mochi_rows_of_different_shapes_and_prompt_lengths_equal_the_transformer_alone(adapters):
    adapter = adapters("mochi")
    model = adapter.transformer
    shapes = [(2, 4, 4), (3, 2, 6), (1, 6, 2), (2, 4, 4)]
    texts = adapter.encode_prompts(PROMPTS)
    # An empty prompt under the pipeline's force_zeros_for_empty_prompt: zero ids, every position masked.
    texts[2] = TextEmbedding(embeds=texts[2].embeds, mask=torch.zeros_like(texts[2].mask))
    assert len({int(t.mask.sum()) for t in texts}) == 4
    latents = [seeded((1, model.config.in_channels, f, h, w), i) for i, (f, h, w) in enumerate(shapes)]
    timesteps = torch.tensor([999.0, 500.0, 1.0, 250.0])
    expected = [
        model(
            hidden_states=x,
            encoder_hidden_states=text.embeds,
            timestep=timesteps[i : i + 1],
            encoder_attention_mask=text.mask,
            return_dict=False,
        )[0]
        for i, (x, text) in enumerate(zip(latents, texts, strict=True))
    ]
    packed = adapter.packed_forward(model)
    # The first two rows bring their cached text projections, as the runner hands them after a request's first step.
    rows = [
        PackedRow(x, timesteps[i], text, packed.text_kv(text) if i < 2 else None)
        for i, (x, text) in enumerate(zip(latents, texts, strict=True))
    ]
    assert_rows_equal(run_packed(packed, rows), expected)


# --- HunyuanVideo ---------------------------------------------------------------------------------------


def hunyuan_rows(adapter, shapes, texts, timesteps, guidance):
    rows = []
    for i, ((f, h, w), text) in enumerate(zip(shapes, texts, strict=True)):
        row = PackedRow(seeded((1, adapter.transformer.config.in_channels, f, h, w), i), timesteps[i], text)
        row.guidance = guidance[i]  # the request's embedded guidance scale
        rows.append(row)
    return rows


def hunyuan_expected(model, rows):
    return [
        model(
            hidden_states=row.latents,
            timestep=row.timestep.reshape(1),
            encoder_hidden_states=row.text.embeds,
            encoder_attention_mask=row.text.mask,
            pooled_projections=row.text.pooled,
            guidance=torch.tensor([row.guidance * 1000.0]),
            return_dict=False,
        )[0]
        for row in rows
    ]


def right_padded(text: TextEmbedding) -> TextEmbedding:
    """The same prompt as a right-padding tokenizer (HunyuanVideo's own) would give it: true tokens first."""
    valid = text.mask[0].bool()
    order = torch.cat([valid.nonzero()[:, 0], (~valid).nonzero()[:, 0]])
    return TextEmbedding(embeds=text.embeds[:, order], mask=text.mask[:, order], pooled=text.pooled)


@pytest.mark.parametrize("padding", ["left", "right", "mixed"])
@torch.no_grad()
def test_hunyuanvideo_rows_of_different_shapes_and_guidance_equal_the_transformer_alone(padding, adapters):
    from engine.families.hunyuanvideo import HunyuanVideoPackedForward

    adapter = adapters("hunyuanvideo")
    model = adapter.transformer
    texts = adapter.encode_prompts(["a cat", "a red car driving at night", "a dog", "a bird flying over the sea"])
    assert adapter.pipe.tokenizer.padding_side == "left"  # the tiny Llama tokenizer's default
    if padding != "left":
        texts = [right_padded(t) if padding == "right" or i % 2 else t for i, t in enumerate(texts)]
    shapes = [(2, 4, 4), (3, 2, 6), (1, 6, 2), (2, 4, 4)]
    rows = hunyuan_rows(adapter, shapes, texts, torch.tensor([999.0, 500.0, 1.0, 250.0]), [6.0, 1.0, 3.5, 2.0])
    packed = HunyuanVideoPackedForward(model)
    rows[1].text_kv = packed.text_kv(rows[1].text)
    assert_rows_equal(run_packed(packed, rows), hunyuan_expected(model, rows))


# --- rows leave between blocks (first-block caching) ----------------------------------------------------


@pytest.mark.parametrize("family", ["cogvideox", "mochi", "hunyuanvideo"])
@torch.no_grad()
def test_rows_dropped_after_the_first_block_leave_the_others_unchanged(family, adapters):
    """The runner runs the tail blocks on the rows whose cache does not hold: their outputs must not change."""
    adapter = adapters(family)
    model = adapter.transformer
    packed = adapter.packed_forward(model) if family != "hunyuanvideo" else None
    if packed is None:
        from engine.families.hunyuanvideo import HunyuanVideoPackedForward

        packed = HunyuanVideoPackedForward(model)
    shapes = [(3, 4, 4), (1, 2, 6), (3, 6, 2)]
    texts = adapter.encode_prompts(PROMPTS[:3] if family != "hunyuanvideo" else ["a cat", "a red car", "a dog"])
    timesteps = torch.tensor([999.0, 500.0, 1.0])
    if family == "hunyuanvideo":
        rows = hunyuan_rows(adapter, shapes, texts, timesteps, [6.0, 1.0, 3.5])
    else:
        channels = model.config.in_channels
        rows = []
        for i, ((f, h, w), text) in enumerate(zip(shapes, texts, strict=True)):
            shape = (1, f, channels, h, w) if family == "cogvideox" else (1, channels, f, h, w)
            rows.append(PackedRow(seeded(shape, i), timesteps[i], text))
    full = run_packed(packed, rows)
    state = packed.block(0, packed.embed(rows)).select([0, 2])
    for index in range(1, packed.num_blocks):
        state = packed.block(index, state)
    assert_rows_equal(packed.head(state), [full[0], full[2]])
