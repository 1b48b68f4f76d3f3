"""Wan 2.1 and 2.2 (two experts: a high-noise and a low-noise transformer) over diffusers' WanPipeline.

Stages follow `WanPipeline.__call__`: T5 prompt embeddings cut to their true length and zero-padded,
float32 latents from the request's generator, flow-matching timesteps, CFG, then the VAE's un-normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from engine.attention import cross_attention, self_attention
from engine.families.base import FamilyAdapter, FamilyParts, ModelCall, TextEmbedding, stack_rows, trim_padding
from engine.layer_split.layout import Layout
from engine.packing import PackedForward, PackedRow, PackedState, Segments, block_kv, text_keys
from engine.request import GenerationRequest
from engine.sequence import Sequence
from engine.tiny import t5_encoder, t5_tokenizer
from engine.vae import fast_decode, fast_pieces, wan_pieces


class WanAdapter(FamilyAdapter):
    family = "wan"
    pipeline_class = "WanPipeline"
    default_max_sequence_length = 512

    def __init__(self, pipe, options=None) -> None:
        super().__init__(pipe, options)
        self.experts = [m for m in (pipe.transformer, pipe.transformer_2) if m is not None]
        ratio = pipe.config.boundary_ratio
        self.boundary_timestep = None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps
        if pipe.config.expand_timesteps:
            # Wan 2.2 TI2V's per-token timesteps are not supported yet; refuse rather than differ.
            raise ValueError("WanPipeline with expand_timesteps=True is not supported by the engine")
        self.patch_size = self.experts[0].config.patch_size
        self.dtype = self.experts[0].dtype
        self.spatial_multiple = pipe.vae_scale_factor_spatial * self.patch_size[1]
        self.temporal_factor = pipe.vae_scale_factor_temporal
        # Image-to-video's extra image K/V and fused projections are not in the packed forward: diffusers serves them.
        self._packed = {id(m): WanPackedForward(m) for m in self.experts if WanPackedForward.supports(m)}

    def packed_forward(self, model: torch.nn.Module) -> PackedForward | None:
        return self._packed.get(id(model))

    def models(self) -> list[torch.nn.Module]:
        return self.experts

    def cache_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.blocks)

    def text_kv_parts(self, model: torch.nn.Module) -> tuple[torch.nn.Module, list] | None:
        attentions = [block.attn2 for block in model.blocks]
        if any(a.add_k_proj is not None or getattr(a, "fused_projections", False) for a in attentions):
            return None  # image-to-video's extra image K/V and fused projections: computed in the forward
        return model.condition_embedder.text_embedder, attentions

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[TextEmbedding]:
        pipe = self.pipe
        length = self.max_sequence_length
        inputs = pipe.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = inputs.input_ids, inputs.attention_mask
        seq_lens = mask.gt(0).sum(dim=1).long()
        device = pipe.text_encoder.device
        ids, mask = trim_padding(ids, mask)
        hidden = pipe.text_encoder(ids.to(device), mask.to(device)).last_hidden_state
        hidden = hidden.to(dtype=pipe.text_encoder.dtype, device=self.device)
        out = []
        for row, n in zip(hidden, seq_lens, strict=True):
            # The pipeline keeps the true tokens and zeroes the padding positions; the mask marks the true ones.
            padded = torch.cat([row[:n], row.new_zeros(length - int(n), row.size(1))])
            true_tokens = (torch.arange(length) < n).unsqueeze(0).to(self.device)
            out.append(TextEmbedding(embeds=padded.unsqueeze(0).to(self.dtype), mask=true_tokens))
        return out

    def prepare_latents(self, request: GenerationRequest, generator: torch.Generator) -> torch.Tensor:
        pipe = self.pipe
        shape = (
            1,
            self.experts[0].config.in_channels,
            (request.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            request.height // pipe.vae_scale_factor_spatial,
            request.width // pipe.vae_scale_factor_spatial,
        )
        return self.randn(shape, generator)

    def set_timesteps(self, seq: Sequence) -> None:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(seq.request.num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)
        seq.scheduler, seq.timesteps = scheduler, scheduler.timesteps

    def expert(self, seq: Sequence) -> int:
        if self.boundary_timestep is None or seq.timestep >= self.boundary_timestep:
            return 0
        return 1

    def tokens_per_row(self, seq: Sequence) -> int:
        packed = self.packed_forward(self.experts[self.expert(seq)])
        if packed is not None:
            return packed.tokens(tuple(seq.latents.shape[1:]), seq.cond)
        _, _, f, h, w = seq.latents.shape
        pt, ph, pw = self.patch_size
        return (f // pt) * (h // ph) * (w // pw) + seq.cond.length

    def model_call(self, seqs: list[Sequence]) -> ModelCall:
        guided = [s for s in seqs if s.uncond is not None]
        rows = seqs + guided
        latents = stack_rows([s.latents for s in rows]).to(self.dtype)
        timestep = torch.stack([s.timestep for s in rows])
        text = stack_rows([s.cond.embeds for s in seqs] + [s.uncond.embeds for s in guided])
        kwargs = dict(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, attention_kwargs=None)
        return ModelCall(model=self.experts[self.expert(seqs[0])], kwargs=kwargs, rows=len(rows))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seqs: list[Sequence]) -> list[np.ndarray]:
        with fast_decode(self.vae):  # engine/vae.py
            return self.to_frames(self.vae.decode(self._vae_input(latents), return_dict=False)[0])

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents un-normalised for the VAE, as the pipeline does before decoding."""
        vae = self.vae
        latents = latents.to(vae.device, dtype=vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        return latents / inv_std + mean

    def decode_stream(self, latents: torch.Tensor, seq: Sequence, long: bool) -> Iterator[np.ndarray]:
        """One latent frame at a time through the VAE's causal cache: the frames of `decode`, exactly."""
        for piece in fast_pieces(self.vae, wan_pieces(self.vae, self._vae_input(latents))):
            yield self.to_frames(piece)[0]

    def embeds_frame_timesteps(self) -> bool:
        """Wan's packed forward embeds a timestep per latent frame (`PackedRow.timestep` of shape (F,))."""
        return self.packs and all(p.patch_size[0] == 1 for p in self._packed.values())


class WanPackedForward:
    """WanTransformer3DModel's forward over packed rows, on the model's own modules and weights.

    Follows `WanTransformer3DModel.forward` and `WanTransformerBlock.forward` (Wan 2.1 / 2.2 text-to-video) step by
    step; what differs is only where a row's own values enter: its timestep modulation is repeated over its own
    tokens (as Wan 2.2 TI2V's per-token timesteps do; a row may also give each latent frame its own timestep, which
    its frame's tokens take), its rotary table comes from its own F x H x W, and attention stays within the row
    (engine.attention).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.num_blocks = len(model.blocks)
        self.patch_size = tuple(model.config.patch_size)
        self._rope: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        attentions = [a for block in model.blocks for a in (block.attn1, block.attn2)]
        return all(a.add_k_proj is None and not getattr(a, "fused_projections", False) for a in attentions)

    # --- text ----------------------------------------------------------------------------------------

    @staticmethod
    def _text_pads(text: TextEmbedding) -> tuple[int, int]:
        """A prompt's true tokens and zero padding positions (the mask marks the true ones)."""
        true = text.length if text.mask is None else int(text.mask.sum())
        return true, text.length - true

    @torch.no_grad()
    def text_kv(self, text: TextEmbedding) -> dict[str, Any]:
        """The prompt's projected text and keys' logit bias (`engine.packing.text_keys`).

        The pipeline zero-pads every prompt to max_sequence_length and cross-attention attends over those pads
        unmasked; every pad has the same key and value, so one pad key whose logit carries log(number of pads)
        gives the same softmax over the same values, at the cost of one key instead of hundreds.
        """
        true, pads = self._text_pads(text)
        projected = self.model.condition_embedder.text_embedder(text.embeds[:, : true + min(pads, 1)])
        bias = None
        if pads > 1:
            bias = projected.new_zeros(true + 1, dtype=torch.float32)
            bias[-1] = math.log(pads)
        return text_keys(projected, bias)

    def tokens(self, latent_shape: tuple[int, ...], text: TextEmbedding) -> int:
        _, f, h, w = latent_shape[-4:]
        pt, ph, pw = self.patch_size
        true, pads = self._text_pads(text)
        return (f // pt) * (h // ph) * (w // pw) + true + min(pads, 1)

    # --- forward -------------------------------------------------------------------------------------

    def _rotary(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own rotary tables for one latent shape (they depend on F x H x W only)."""
        key = tuple(shape[-3:])
        if key not in self._rope:
            self._rope[key] = self.model.rope(torch.empty((1, 0, *key), device="meta"))
        return self._rope[key]

    @torch.no_grad()
    def embed(self, rows: list[PackedRow]) -> PackedState:
        model = self.model
        dtype = model.patch_embedding.weight.dtype
        embedded: dict[int, torch.Tensor] = {}  # a request's conditional and unconditional rows share latents
        parts, shapes = [], []
        for row in rows:
            latents = row.latents.reshape(1, *row.latents.shape[-4:])
            if id(row.latents) not in embedded:
                embedded[id(row.latents)] = model.patch_embedding(latents.to(dtype)).flatten(2).transpose(1, 2)
            parts.append(embedded[id(row.latents)])
            shapes.append(tuple(latents.shape[1:]))
        hidden = torch.cat(parts, dim=1).contiguous() if len(parts) > 1 else parts[0].contiguous()
        tokens = Segments(tuple(p.shape[1] for p in parts))

        # A row's timestep, or one per latent frame (a continuation's clean context at 0): embedded together.
        levels = [row.timestep.reshape(-1) for row in rows]
        embedder = model.condition_embedder
        timestep = embedder.timesteps_proj(torch.cat(levels))
        time_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if timestep.dtype != time_dtype and time_dtype != torch.int8:
            timestep = timestep.to(time_dtype)
        temb = embedder.time_embedder(timestep).type_as(hidden)
        timestep_proj = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))
        counts = [len(level) for level in levels]
        per_frame = [row.timestep.dim() > 0 for row in rows]
        temb_rows = [t if f else t[0] for t, f in zip(temb.split(counts), per_frame, strict=True)]
        proj_rows = [t if f else t[0] for t, f in zip(timestep_proj.split(counts), per_frame, strict=True)]

        rotary = [self._rotary(shape) for shape in shapes]
        text_kv = [row.text_kv if row.text_kv is not None else self.text_kv(row.text) for row in rows]
        return PackedState(
            hidden=hidden,
            tokens=tokens,
            shapes=shapes,
            per_token={
                "rope_cos": torch.cat([cos for cos, _ in rotary], dim=1),
                "rope_sin": torch.cat([sin for _, sin in rotary], dim=1),
            },
            per_row={"temb": temb_rows, "timestep_proj": proj_rows, "text_kv": text_kv},
        )

    @torch.no_grad()
    def block(self, index: int, state: PackedState) -> PackedState:
        block = self.model.blocks[index]
        tokens, hidden = state.tokens, state.hidden
        levels, runs = _levels(state, "timestep_proj", 2)
        modulation = block.scale_shift_table + levels.float()  # (levels, 6, D)

        def per_token(i: int) -> torch.Tensor:  # shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate
            return runs.expand(modulation[:, i])

        # 1. Self-attention
        norm = (block.norm1(hidden.float()) * (1 + per_token(1)) + per_token(0)).type_as(hidden)
        attn = self._self_attention(block.attn1, norm, state)
        hidden = (hidden.float() + attn * per_token(2)).type_as(hidden)
        # 2. Cross-attention
        norm = block.norm2(hidden.float()).type_as(hidden)
        hidden = hidden + self._cross_attention(block.attn2, norm, state, index)
        # 3. Feed-forward
        norm = (block.norm3(hidden.float()) * (1 + per_token(4)) + per_token(3)).type_as(hidden)
        ff = block.ffn(norm)
        hidden = (hidden.float() + ff.float() * per_token(5)).type_as(hidden)
        return PackedState(hidden, tokens, state.shapes, state.per_token, state.per_row)

    def _self_attention(self, attn: Any, x: torch.Tensor, state: PackedState) -> torch.Tensor:
        query = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(x)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(x).unflatten(2, (attn.heads, -1))
        cos, sin = state.per_token["rope_cos"], state.per_token["rope_sin"]
        query, key = _apply_rotary(query, cos, sin), _apply_rotary(key, cos, sin)
        out = self_attention(query, key, value, state.tokens).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _cross_attention(self, attn: Any, x: torch.Tensor, state: PackedState, index: int) -> torch.Tensor:
        query = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1))
        entries = state.per_row["text_kv"]
        kv = [block_kv(entry, index, attn) for entry in entries]
        keys, values = [k for k, _ in kv], [v for _, v in kv]
        out = cross_attention(query, state.tokens, keys, values, [entry["bias"] for entry in entries])
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    @torch.no_grad()
    def head(self, state: PackedState) -> list[torch.Tensor]:
        model, tokens, hidden = self.model, state.tokens, state.hidden
        temb, runs = _levels(state, "temb", 1)  # (levels, D)
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = runs.expand(shift[:, 0]), runs.expand(scale[:, 0])
        hidden = (model.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = model.proj_out(hidden)
        pt, ph, pw = self.patch_size
        outputs = []
        for part, (_, f, h, w) in zip(tokens.split(hidden), state.shapes, strict=True):
            part = part.reshape(1, f // pt, h // ph, w // pw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
            outputs.append(part.flatten(6, 7).flatten(4, 5).flatten(2, 3))
        return outputs


def _levels(state: PackedState, name: str, dims: int) -> tuple[torch.Tensor, Segments]:
    """A per-row timestep embedding (`dims` dimensions per row) as levels and the tokens each level covers.

    A row with one timestep is one level over all its tokens; a row with one per latent frame (`PackedRow.timestep`
    of shape (F,), as Wan 2.2 TI2V's per-token timesteps) one level per frame over that frame's tokens.
    """
    entries = state.per_row[name]
    if all(entry.dim() == dims for entry in entries):
        return torch.stack(entries), state.tokens
    parts, runs = [], []
    for entry, tokens in zip(entries, state.tokens.lengths, strict=True):
        if entry.dim() == dims:
            parts.append(entry.unsqueeze(0))
            runs.append(tokens)
        else:
            parts.append(entry)
            runs += [tokens // entry.shape[0]] * entry.shape[0]
    return torch.cat(parts), Segments(tuple(runs))


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's rotary embedding (interleaved pairs), on (1, T, heads, d) with per-token tables."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


# --- layer split: the output head the last stage runs (engine.layer_split) ----------------------------------------


def _layer_split_tail(model, hidden, call, extras, shape):
    temb = extras[0]
    batch, _, frames, height, width = shape
    p_t, p_h, p_w = model.config.patch_size
    if temb.ndim == 3:
        shift, scale = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    hidden = (model.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
    hidden = hidden.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)


# --- tiny random-weight pipeline (engine.tiny) --------------------------------------------------------------------


def _tiny_pipeline(small: bool = False, two_experts: bool = False):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = t5_tokenizer()
    experts = [_tiny_transformer(small) for _ in range(2 if two_experts else 1)]
    # base_dim 8 rather than diffusers' test value 3: a 3-channel causal conv hits a slow CPU kernel (4x slower).
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer, small),
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=experts[0],
        transformer_2=experts[1] if two_experts else None,
        # Wan 2.2 A14B's split: the high-noise expert serves timesteps >= 875, the low-noise one the rest.
        boundary_ratio=0.875 if two_experts else None,
    )


def _tiny_transformer(small: bool = False):
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


FAMILY = FamilyParts(
    adapter=WanAdapter,
    layout=Layout(
        ("blocks",),
        ("norm_out", "proj_out", "scale_shift_table"),
        _layer_split_tail,
        (("condition_embedder", 0),),
        packed=WanPackedForward,
    ),
    # "wan2.2" (two experts) is built only on request: it is not a family of its own.
    tiny={"wan": _tiny_pipeline, "wan2.2": lambda small: _tiny_pipeline(small, two_experts=True)},
    bench_shapes=((9, 17), ((32, 32), (32, 48))),
    mixed_bench_shapes=((5, 9, 13, 17), ((32, 32), (32, 48), (48, 32), (48, 48))),
)
