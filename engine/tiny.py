"""Tiny random-weight diffusers pipelines of every family, built offline from configs.

They load back through the same `from_pretrained` path as a real checkpoint, so a fresh machine can
serve, test and benchmark every family without downloading a single weight.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.family_rules import FAMILIES

# Words the tiny tokenizers know whole; anything else falls back to single characters.
_WORDS = (
    "a the of and in on with at to from by cat dog bird fish horse robot car city forest ocean river mountain "
    "sky sun moon night day rain snow fire light dark red blue green yellow white black small big slow fast "
    "running walking flying swimming dancing video camera scene view close wide shot beautiful old new man "
    "woman child street house tree flower field beach wave cloud storm space star planet"
).split()

# Components are built under this seed so a rebuilt directory holds the same weights.
_SEED = 0


def build_tiny_models(out_dir: Path, families: list[str] | None = None) -> dict[str, Path]:
    """Build (or keep, when already complete) a tiny pipeline of each family under `out_dir/<family>`.

    Returns the family -> directory map. A directory counts as complete once its `model_index.json`
    exists: it is written last, after every component.
    """
    return build_models(out_dir, families, size="tiny")


def build_models(out_dir: Path, families: list[str] | None = None, size: str = "tiny") -> dict[str, Path]:
    """Like `build_tiny_models`, at a chosen size: "tiny" (test configs) or "small" (a few million
    parameters per transformer, compute-bound on a CPU; the benchmark's second size)."""
    if size not in ("tiny", "small"):
        raise ValueError(f"unknown size {size!r}; known: tiny, small")
    out_dir = Path(out_dir)
    families = list(families or FAMILIES)
    built: dict[str, Path] = {}
    for family in families:
        if family not in _BUILDERS:
            raise ValueError(f"unknown model family {family!r}; known: {', '.join(_BUILDERS)}")
        target = out_dir / family
        if not (target / "model_index.json").is_file():
            _save_atomically(functools.partial(_BUILDERS[family], size == "small"), target)
        built[family] = target
    return built


def _save_atomically(build: Callable[[], Any], target: Path) -> None:
    """Save into a sibling temp directory and rename, so a crash never leaves a half-written model."""
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        staging = Path(tmp) / target.name
        with torch.random.fork_rng():
            torch.manual_seed(_SEED)
            pipe = build()
        pipe.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier attempt
        staging.rename(target)


# --- tokenizers, from in-memory vocabularies -------------------------------------------------------


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [f"▁{w}" for w in _WORDS]
    pieces += list(string.ascii_lowercase + string.digits + ".,!?'-")
    pieces += [f"▁{c}" for c in string.ascii_lowercase + string.digits]
    vocab = [(p, 0.0 if i < 3 else -float(i) / 10) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _llama_tokenizer():
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4}
    for c in string.ascii_letters + string.digits + ".,!?'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(f"▁{c}", len(vocab))
    merges = [("▁", c) for c in string.ascii_letters + string.digits]
    return LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>")


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(f"{c}</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


def _t5_encoder(tokenizer, small: bool = False):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=256 if small else 32,
        d_ff=1024 if small else 37,
        d_kv=64 if small else 8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


# --- one builder per family ------------------------------------------------------------------------


def _wan(small: bool = False, two_experts: bool = False):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = _t5_tokenizer()
    experts = [_wan_transformer(small) for _ in range(2 if two_experts else 1)]
    # base_dim 8 rather than diffusers' test value 3: a 3-channel causal conv hits a slow CPU kernel (4x slower).
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(tokenizer, small),
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=experts[0],
        transformer_2=experts[1] if two_experts else None,
        # Wan 2.2 A14B's split: the high-noise expert serves timesteps >= 875, the low-noise one the rest.
        boundary_ratio=0.875 if two_experts else None,
    )


def _wan_transformer(small: bool = False):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=4 if small else 2,
        attention_head_dim=64 if small else 12,
        in_channels=16,
        out_channels=16,
        text_dim=256 if small else 32,
        freq_dim=256,
        ffn_dim=1024 if small else 32,
        num_layers=4 if small else 2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def _cogvideox(small: bool = False):
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    tokenizer = _t5_tokenizer()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=64 if small else 8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=64 if small else 2,
        text_embed_dim=256 if small else 32,
        num_layers=4 if small else 1,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        # The pipeline pads prompts to 226 tokens; the transformer's positional table must match.
        max_text_seq_length=226,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(tokenizer, small),
        vae=vae.eval(),
        transformer=transformer.eval(),
        # CogVideoX-2b's own scheduler settings: v-prediction keeps the random model's latents in range.
        scheduler=CogVideoXDDIMScheduler(
            beta_end=0.012,
            beta_start=0.00085,
            beta_schedule="scaled_linear",
            clip_sample=False,
            prediction_type="v_prediction",
            rescale_betas_zero_snr=True,
            set_alpha_to_one=True,
            snr_shift_scale=3.0,
            timestep_spacing="trailing",
        ),
    )


def _mochi(small: bool = False):
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    tokenizer = _t5_tokenizer()
    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=4 if small else 2,
        attention_head_dim=64 if small else 8,
        num_layers=4 if small else 2,
        pooled_projection_dim=64 if small else 16,
        in_channels=12,
        out_channels=None,
        qk_norm="rms_norm",
        text_embed_dim=256 if small else 32,
        time_embed_dim=64 if small else 4,
        activation_fn="swiglu",
        max_sequence_length=256,
    )
    vae = AutoencoderKLMochi(
        latent_channels=12,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
    )
    return MochiPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(tokenizer, small),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _hunyuanvideo(small: bool = False):
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer, tokenizer_2 = _llama_tokenizer(), _clip_tokenizer()
    llama = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=256 if small else 16,
        intermediate_size=1024 if small else 37,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        hidden_act="gelu",
        rms_norm_eps=1e-5,
    )
    clip = CLIPTextConfig(
        bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
        hidden_size=8,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer_2),
        hidden_act="gelu",
        projection_dim=32,
        max_position_embeddings=77,
    )
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=4 if small else 2,
        attention_head_dim=64 if small else 10,
        num_layers=2 if small else 1,
        num_single_layers=2 if small else 1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=256 if small else 16,
        pooled_projection_dim=8,
        rope_axes_dim=(16, 24, 24) if small else (2, 4, 4),
    )
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    return HunyuanVideoPipeline(
        text_encoder=LlamaModel(llama).eval(),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=CLIPTextModel(clip).eval(),
        tokenizer_2=tokenizer_2,
    )


def _ltx(small: bool = False):
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = _t5_tokenizer()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=64 if small else 8,
        cross_attention_dim=256 if small else 32,
        num_layers=4 if small else 1,
        caption_channels=256 if small else 32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        # LTX-Video's own compression (32x space, 8x time: 3 scaling blocks x a 4-pixel patch), so the tiny
        # model obeys the family's 8k+1 frames and multiples of 32, and its latents are as short as the real one's.
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=_t5_encoder(tokenizer, small),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )


# "wan2.2" (two experts) is built only on request: it is not a family of its own.
_BUILDERS: dict[str, Callable[[bool], Any]] = {
    "wan": _wan,
    "wan2.2": lambda small: _wan(small, two_experts=True),
    "cogvideox": _cogvideox,
    "mochi": _mochi,
    "hunyuanvideo": _hunyuanvideo,
    "ltx": _ltx,
}


def describe(path: Path) -> dict[str, Any]:
    """The component classes of a saved pipeline (for `vidserve models list` style output)."""
    return json.loads((Path(path) / "model_index.json").read_text())
