"""Mochi 1 over diffusers' MochiPipeline, and its packed forward.

Stages follow `MochiPipeline.__call__`: masked T5 embeddings (all-zero for an empty prompt when the
pipeline says so), a linear-quadratic sigma schedule, CFG in float32, and the VAE's latent statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule, retrieve_timesteps

from engine.attention import self_attention
from engine.families.base import (
    FamilyAdapter,
    FamilyParts,
    ModelCall,
    TextEmbedding,
    pad_positions,
    stack_rows,
    trim_padding,
)
from engine.layer_split.layout import Layout, call_arg
from engine.packing import PackedForward, PackedRow, PackedState, Segments
from engine.request import GenerationRequest, InvalidRequest
from engine.sequence import Sequence
from engine.tiny import t5_encoder, t5_tokenizer
from engine.vae import fast_decode, fast_pieces, mochi_pieces

_THRESHOLD_NOISE = 0.025  # MochiPipeline's fixed schedule parameter


class MochiAdapter(FamilyAdapter):
    family = "mochi"
    pipeline_class = "MochiPipeline"
    default_max_sequence_length = 256

    def __init__(self, pipe, options=None) -> None:
        super().__init__(pipe, options)
        self.spatial_multiple = pipe.vae_spatial_scale_factor * self.transformer.config.patch_size
        self.temporal_factor = pipe.vae_temporal_scale_factor
        self.text_dtype = pipe.text_encoder.dtype
        self._packed = MochiPackedForward(self.transformer)

    def packed_forward(self, model: torch.nn.Module) -> PackedForward | None:
        return self._packed if model is self.transformer else None

    def check_request(self, request: GenerationRequest) -> None:
        super().check_request(request)
        if request.num_inference_steps < 2:
            # The linear-quadratic schedule divides by num_steps // 2.
            raise InvalidRequest("num_inference_steps", "must be at least 2 for this model family")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[TextEmbedding]:
        pipe = self.pipe
        inputs = self.tokenize(prompts)
        ids, mask = inputs.input_ids, inputs.attention_mask.bool()
        if pipe.config.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts])
            ids = ids.masked_fill(empty[:, None], 0)
            mask = mask.masked_fill(empty[:, None], False)
        device = pipe.text_encoder.device
        # The transformer reads only unmasked text positions (pooling and attention), so padding is skipped.
        short_ids, short_mask = trim_padding(ids, mask)
        hidden = pipe.text_encoder(short_ids.to(device), attention_mask=short_mask.to(device))[0]
        hidden = pad_positions(hidden, ids.shape[1]).to(dtype=self.text_dtype, device=self.device)
        mask = mask.to(self.device)
        return [TextEmbedding(embeds=h.unsqueeze(0), mask=m.unsqueeze(0)) for h, m in zip(hidden, mask, strict=True)]

    def prepare_latents(self, request: GenerationRequest, generator: torch.Generator) -> torch.Tensor:
        pipe = self.pipe
        shape = (
            1,
            self.transformer.config.in_channels,
            (request.num_frames - 1) // pipe.vae_temporal_scale_factor + 1,
            request.height // pipe.vae_spatial_scale_factor,
            request.width // pipe.vae_spatial_scale_factor,
        )
        return self.randn(shape, generator).to(self.text_dtype)

    def set_timesteps(self, seq: Sequence) -> None:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        sigmas = np.array(linear_quadratic_schedule(seq.request.num_inference_steps, _THRESHOLD_NOISE))
        timesteps, _ = retrieve_timesteps(scheduler, seq.request.num_inference_steps, self.device, None, sigmas)
        scheduler.set_begin_index(0)
        seq.scheduler, seq.timesteps = scheduler, timesteps

    def tokens_per_row(self, seq: Sequence) -> int:
        if self._packed is not None:
            return self._packed.tokens(tuple(seq.latents.shape[1:]), seq.cond)
        _, _, f, h, w = seq.latents.shape
        p = self.transformer.config.patch_size
        return f * (h // p) * (w // p) + seq.cond.length

    def model_call(self, seqs: list[Sequence]) -> ModelCall:
        guided = [s for s in seqs if s.uncond is not None]
        rows = seqs + guided
        texts = [s.cond for s in seqs] + [s.uncond for s in guided]
        latents = stack_rows([s.latents for s in rows])
        kwargs = dict(
            hidden_states=latents,
            encoder_hidden_states=stack_rows([t.embeds for t in texts]),
            timestep=torch.stack([s.timestep for s in rows]).to(latents.dtype),
            encoder_attention_mask=stack_rows([t.mask for t in texts]),
            attention_kwargs=None,
        )
        return ModelCall(model=self.transformer, kwargs=kwargs, rows=len(rows))

    def guide(self, seq: Sequence, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
        return super().guide(seq, cond.to(torch.float32), None if uncond is None else uncond.to(torch.float32))

    def scheduler_step(self, seq: Sequence, noise_pred: torch.Tensor) -> None:
        dtype = seq.latents.dtype
        latents = seq.scheduler.step(noise_pred, seq.timestep, seq.latents.to(torch.float32), return_dict=False)[0]
        seq.latents = latents.to(dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seqs: list[Sequence]) -> list[np.ndarray]:
        with fast_decode(self.vae):  # heavy batch-1 3-D convolutions on oneDNN (engine/vae.py)
            return self.to_frames(self.vae.decode(self._vae_input(latents), return_dict=False)[0])

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents un-normalised with the VAE's statistics, as the pipeline does before decoding."""
        config = self.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            c = config.latent_channels
            mean = torch.tensor(config.latents_mean).view(1, c, 1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(config.latents_std).view(1, c, 1, 1, 1).to(latents.device, latents.dtype)
            return latents * std / config.scaling_factor + mean
        return latents / config.scaling_factor

    def decode_stream(self, latents: torch.Tensor, seq: Sequence, long: bool) -> Iterator[np.ndarray]:
        """Framewise, two latent frames (12 frames) at a time through the VAE's convolution cache."""
        for piece in fast_pieces(self.vae, mochi_pieces(self.vae, self._vae_input(latents))):
            yield self.to_frames(piece)[0]


class MochiPackedForward:
    """MochiTransformer3DModel's forward over packed rows, on the model's own modules and weights.

    Follows `MochiTransformer3DModel.forward`, `MochiTransformerBlock.forward` and `MochiAttnProcessor2_0`. Mochi's
    text stream is narrower than its video stream (`pooled_projection_dim`), so `hidden` holds the rows' video
    tokens only and each row's text stream, (1, L_row, D_text), travels in `per_row["text"]`; attention joins them
    per row as `[text; video]`. A row's text is its valid prompt tokens only: the model attends to no padding
    (an empty prompt under `force_zeros_for_empty_prompt` has none). Each row keeps its own timestep and pooled-
    caption conditioning and its own rotary positions. Unlike the contract's other families, the blocks update a
    `per_row` entry (the text stream cannot live in `hidden` or `per_token`, which share `hidden`'s width); the
    head reads only the video, so rows that leave after block 0 still end exactly.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.num_blocks = len(model.transformer_blocks)
        self._rope: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._joint: dict[tuple, tuple[torch.Tensor, Segments]] = {}

    @staticmethod
    def _valid(text: TextEmbedding) -> torch.Tensor:
        return text.embeds if text.mask is None else text.embeds[:, text.mask[0].bool()]

    def text_kv(self, text: TextEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's caption projection of its valid tokens (1, L', D_text) and its attention-pooled vector
        (1, D): neither depends on the step."""
        embed = self.model.time_embed
        mask = text.mask if text.mask is not None else text.embeds.new_ones(text.embeds.shape[:2], dtype=torch.bool)
        with torch.no_grad():
            return embed.caption_proj(self._valid(text)), embed.pooler(text.embeds, mask)

    def tokens(self, latent_shape: tuple[int, ...], text: TextEmbedding) -> int:
        _, f, h, w = latent_shape[-4:]
        p = self.model.config.patch_size
        valid = text.length if text.mask is None else int(text.mask.sum())
        return f * (h // p) * (w // p) + valid

    # --- forward -------------------------------------------------------------------------------------

    def _rotary(self, shape: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's rotary tables (n, heads, d/2) for a (frames, patch rows, patch columns) grid."""
        if shape not in self._rope:
            if len(self._rope) >= 64:  # a few shapes are in use at a time; keep memory flat
                self._rope.pop(next(iter(self._rope)))
            model = self.model
            self._rope[shape] = model.rope(model.pos_frequencies, *shape, device=device, dtype=torch.float32)
        return self._rope[shape]

    @torch.no_grad()
    def embed(self, rows: list[PackedRow]) -> PackedState:
        model = self.model
        p = model.config.patch_size
        proj = model.patch_embed.proj
        dtype = proj.weight.dtype
        device = rows[0].latents.device
        shapes = [tuple(row.latents.shape[-4:]) for row in rows]
        # A request's conditional and unconditional rows share their latents: patch them once.
        patches: dict[int, torch.Tensor] = {}
        for row, (c, f, h, w) in zip(rows, shapes, strict=True):
            if id(row.latents) not in patches:  # the stride-p Conv2d per frame, as one matrix product
                x = row.latents.reshape(c, f, h // p, p, w // p, p).permute(1, 2, 4, 0, 3, 5)
                patches[id(row.latents)] = x.reshape(f * (h // p) * (w // p), c * p * p).to(dtype)
        firsts = list(patches)
        video = F.linear(torch.cat([patches[k] for k in firsts]), proj.weight.flatten(1), proj.bias)
        video_of = dict(zip(firsts, video.split([patches[k].shape[0] for k in firsts]), strict=True))
        hidden = torch.cat([video_of[id(row.latents)] for row in rows]).unsqueeze(0)
        tokens = Segments(tuple(video_of[id(row.latents)].shape[0] for row in rows))

        texts = [row.text_kv if row.text_kv is not None else self.text_kv(row.text) for row in rows]
        embedder = model.time_embed
        timesteps = torch.stack([row.timestep.reshape(()) for row in rows]).to(dtype)
        emb = embedder.timestep_embedder(embedder.time_proj(timesteps).to(dtype)) + torch.cat([t[1] for t in texts])
        rotary = [self._rotary((f, h // p, w // p), device) for _, f, h, w in shapes]
        return PackedState(
            hidden=hidden,
            tokens=tokens,
            shapes=shapes,
            per_token={
                "rope_cos": torch.cat([cos for cos, _ in rotary]).unsqueeze(0),
                "rope_sin": torch.cat([sin for _, sin in rotary]).unsqueeze(0),
            },
            per_row={"emb": list(emb), "text": [t[0] for t in texts]},
        )

    @torch.no_grad()
    def block(self, index: int, state: PackedState) -> PackedState:
        block = self.model.transformer_blocks[index]
        video, tokens = state.hidden, state.tokens
        texts = state.per_row["text"]
        text_tokens = Segments(tuple(t.shape[1] for t in texts))
        text = torch.cat(texts, dim=1)
        emb = torch.stack(state.per_row["emb"])

        # MochiRMSNormZero, per token: (1 + scale) and the gates of the row's own conditioning.
        norm1 = block.norm1
        scale_msa, gate_msa, scale_mlp, gate_mlp = (tokens.expand(c) for c in norm1.linear(norm1.silu(emb)).chunk(4, 1))
        norm_video = (norm1.norm(video.float()) * (1 + scale_msa.float())).to(video.dtype)
        context = block.norm1_context
        if block.context_pre_only:  # the last block: MochiLayerNormContinuous, and no text update after it
            scale = text_tokens.expand(context.linear_1(context.silu(emb).to(text.dtype)))
            norm_text = context.norm(text, 1 + scale.float()).to(text.dtype)
        else:
            chunks = context.linear(context.silu(emb)).chunk(4, 1)
            text_scale_msa, text_gate_msa, text_scale_mlp, text_gate_mlp = (text_tokens.expand(c) for c in chunks)
            norm_text = (context.norm(text.float()) * (1 + text_scale_msa.float())).to(text.dtype)

        attn_video, attn_text = self._attention(block.attn1, norm_video, norm_text, state, text_tokens)
        video = video + block.norm2(attn_video, torch.tanh(gate_msa))
        ff = block.ff(block.norm3(video, 1 + scale_mlp.float()))
        video = video + block.norm4(ff, torch.tanh(gate_mlp))
        per_row = state.per_row
        if not block.context_pre_only:
            text = text + block.norm2_context(attn_text, torch.tanh(text_gate_msa))
            ff = block.ff_context(block.norm3_context(text, 1 + text_scale_mlp.float()))
            text = text + block.norm4_context(ff, torch.tanh(text_gate_mlp))
            per_row = {**per_row, "text": text_tokens.split(text)}
        return PackedState(video, tokens, state.shapes, state.per_token, per_row)

    def _joint_layout(self, video: Segments, text: Segments, device: torch.device) -> tuple[torch.Tensor, Segments]:
        """Where each row's `[text; video]` tokens lie in cat([all text, all video]), and the joint row lengths."""
        key = (video.lengths, text.lengths, device)
        if key not in self._joint:
            if len(self._joint) >= 64:  # a few layouts are in use at a time; keep memory flat
                self._joint.pop(next(iter(self._joint)))
            order = []
            for row in range(len(video)):
                order.append(torch.arange(text.offsets[row], text.offsets[row + 1]))
                order.append(torch.arange(video.offsets[row], video.offsets[row + 1]) + text.total)
            joint = Segments(tuple(v + t for v, t in zip(video.lengths, text.lengths, strict=True)))
            self._joint[key] = (torch.cat(order).to(device), joint)
        return self._joint[key]

    def _attention(
        self, attn: Any, video: torch.Tensor, text: torch.Tensor, state: PackedState, text_tokens: Segments
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MochiAttnProcessor2_0 over packed rows: each row attends over its own valid text and video tokens."""
        heads = attn.heads
        query = attn.norm_q(attn.to_q(video).unflatten(2, (heads, -1)))
        key = attn.norm_k(attn.to_k(video).unflatten(2, (heads, -1)))
        value = attn.to_v(video).unflatten(2, (heads, -1))
        cos, sin = state.per_token["rope_cos"], state.per_token["rope_sin"]
        query, key = _apply_rotary(query, cos, sin), _apply_rotary(key, cos, sin)
        text_query = attn.norm_added_q(attn.add_q_proj(text).unflatten(2, (heads, -1)))
        text_key = attn.norm_added_k(attn.add_k_proj(text).unflatten(2, (heads, -1)))
        text_value = attn.add_v_proj(text).unflatten(2, (heads, -1))

        order, joint = self._joint_layout(state.tokens, text_tokens, video.device)
        packed = [
            torch.cat(pair, dim=1).index_select(1, order)
            for pair in ((text_query, query), (text_key, key), (text_value, value))
        ]
        out = self_attention(*packed, joint)
        unpacked = torch.empty_like(out)
        unpacked[:, order] = out
        out_text, out_video = unpacked.flatten(2, 3).split([text_tokens.total, state.tokens.total], dim=1)
        out_video = attn.to_out[1](attn.to_out[0](out_video))
        return out_video, attn.to_add_out(out_text) if hasattr(attn, "to_add_out") else None

    @torch.no_grad()
    def head(self, state: PackedState) -> list[torch.Tensor]:
        model, tokens = self.model, state.tokens
        hidden = state.hidden
        emb = torch.stack(state.per_row["emb"])
        norm = model.norm_out
        scale, shift = norm.linear(norm.silu(emb).to(hidden.dtype)).chunk(2, dim=1)
        hidden = norm.norm(hidden) * (1 + tokens.expand(scale)) + tokens.expand(shift)
        hidden = model.proj_out(hidden)
        p = model.config.patch_size
        outputs = []
        for part, (_, f, h, w) in zip(tokens.split(hidden), state.shapes, strict=True):
            part = part.reshape(1, f, h // p, w // p, p, p, -1).permute(0, 6, 1, 2, 4, 3, 5)
            outputs.append(part.reshape(1, -1, f, h, w))
        return outputs


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """MochiAttnProcessor2_0's rotary embedding (interleaved pairs), (1, T, heads, d) with (1, T, heads, d/2)."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    rotated_cos = (even * cos - odd * sin).to(x.dtype)
    rotated_sin = (even * sin + odd * cos).to(x.dtype)
    return torch.stack([rotated_cos, rotated_sin], dim=-1).flatten(-2)


# --- layer split: the output head the last stage runs (engine.layer_split) ----------------------------------------


def _layer_split_tail(model, hidden, call, extras, shape):
    temb = call_arg(call, 2, "temb")
    batch, _, frames, height, width = shape
    p = model.config.patch_size
    hidden = model.norm_out(hidden, temb)
    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch, frames, height // p, width // p, p, p, -1)
    hidden = hidden.permute(0, 6, 1, 2, 4, 3, 5)
    return hidden.reshape(batch, -1, frames, height, width)


# --- tiny random-weight pipeline (engine.tiny) --------------------------------------------------------------------


def _tiny_pipeline(small: bool = False):
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    tokenizer = t5_tokenizer()
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
        text_encoder=t5_encoder(tokenizer, small),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


FAMILY = FamilyParts(
    adapter=MochiAdapter,
    layout=Layout(
        ("transformer_blocks",),
        ("norm_out", "proj_out"),
        _layer_split_tail,
        shared=("pos_frequencies",),
        packed=MochiPackedForward,
    ),
    tiny={"mochi": _tiny_pipeline},
    bench_shapes=((7, 13), ((32, 32), (32, 48))),
    mixed_bench_shapes=((7, 13, 19), ((32, 32), (32, 48), (48, 32), (48, 48))),
)
