"""The demo model's parts, built from scratch: a tiny word-level UMT5 text encoder with an in-memory vocabulary,
a Wan VAE with 2x spatial / 2x temporal compression, and a small Wan transformer.

All are ordinary diffusers / transformers classes, so the saved directory loads with `WanPipeline.from_pretrained`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from engine.demo.clips import COLOURS, DIRECTIONS, SHAPES

# Words the model knows; anything else becomes <unk>. A few fillers keep near-miss prompts readable.
VOCAB_WORDS: tuple[str, ...] = (
    "a", "an", "the", "moving", "shape", *COLOURS, *SHAPES, *DIRECTIONS,
)  # fmt: skip
TEXT_DIM = 32
LATENT_CHANNELS = 8
# Short text length used in training; `PaddingBias` makes it behave exactly like the pipeline's 512.
TRAIN_TEXT_LEN = 8
PIPELINE_TEXT_LEN = 512
SCHEDULER_SHIFT = 2.0


def build_tokenizer() -> T5Tokenizer:
    # Unigram pieces with the sentencepiece word-start marker, one piece per word.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in VOCAB_WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_text_encoder(vocab_size: int, seed: int) -> UMT5EncoderModel:
    """A random, frozen encoder: distinct words give distinct embeddings, which is all conditioning needs."""
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = UMT5EncoderModel(config).eval()
    model.requires_grad_(False)
    return model


def build_vae(compression: int = 4, z_dim: int = LATENT_CHANNELS) -> AutoencoderKLWan:
    """A Wan VAE compressing `compression`x in space and time (2 or 4); one down stage per factor of 2."""
    stages = {2: [1, 2], 4: [1, 2, 4]}[compression]
    return AutoencoderKLWan(
        base_dim=16,
        z_dim=z_dim,
        dim_mult=stages,
        num_res_blocks=1,
        temperal_downsample=[True] * (len(stages) - 1),
        scale_factor_spatial=compression,
        scale_factor_temporal=compression,
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )


def build_transformer(patch: int = 2, z_dim: int = LATENT_CHANNELS) -> WanTransformer3DModel:
    # Patch 2 on the 8x8 latent of a 4x VAE: 16 tokens per latent frame, 48 per 9-frame clip.
    return WanTransformer3DModel(
        patch_size=(1, patch, patch),
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=TEXT_DIM,
        freq_dim=64,
        ffn_dim=512,
        num_layers=6,
        rope_max_seq_len=64,
    )


def build_scheduler(shift: float = SCHEDULER_SHIFT) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def assemble_pipeline(
    tokenizer: T5Tokenizer,
    text_encoder: UMT5EncoderModel,
    vae: AutoencoderKLWan,
    transformer: WanTransformer3DModel,
    shift: float = SCHEDULER_SHIFT,
) -> WanPipeline:
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=build_scheduler(shift),
    )


class PaddingBias:
    """Cross-attention processor wrapper that lets training use 8 text positions instead of 512.

    The pipeline pads prompt embeddings with zero rows, which the transformer maps to one identical key and value;
    k identical keys weigh exactly like one key with log(k) added to its logit. Adding log((L - n) / (8 - n)) to
    the padding positions of a short sequence therefore reproduces an L-long one at a fraction of the cost.
    """

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.bias: torch.Tensor | None = None  # batch × 1 × 1 × text positions, set before each forward

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):  # noqa: ANN001, ANN204
        mask = self.bias.to(hidden_states.dtype) if encoder_hidden_states is not None else attention_mask
        return self.inner(attn, hidden_states, encoder_hidden_states, mask, rotary_emb)


def install_padding_bias(transformer: WanTransformer3DModel) -> list[PaddingBias]:
    wrappers = []
    for block in transformer.blocks:
        wrapper = PaddingBias(block.attn2.processor)
        block.attn2.processor = wrapper
        wrappers.append(wrapper)
    return wrappers


def padding_bias(lengths: torch.Tensor, effective_len: torch.Tensor, train_len: int = TRAIN_TEXT_LEN) -> torch.Tensor:
    """Additive logit bias (batch × 1 × 1 × train_len) standing in for `effective_len` padded positions."""
    positions = torch.arange(train_len)[None, :]
    pad_here = positions >= lengths[:, None]
    weight = torch.log((effective_len[:, None] - lengths[:, None]).clamp(min=1) / (train_len - lengths[:, None]))
    return torch.where(pad_here, weight, torch.zeros(())).float()[:, None, None, :]
