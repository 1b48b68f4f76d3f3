"""HunyuanVideo over diffusers' HunyuanVideoPipeline (embedded guidance, no unconditional row), and its packed forward.

Stages follow `HunyuanVideoPipeline.__call__`: Llama hidden states under a prompt template (cropped),
a CLIP pooled vector, linear sigmas, and the guidance scale fed to the transformer as a per-sample input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE, retrieve_timesteps

from engine.attention import cross_attention, self_attention
from engine.families.base import FamilyAdapter, FamilyParts, ModelCall, TextEmbedding, stack_rows
from engine.layer_split.layout import Layout, call_arg
from engine.packing import PackedForward, PackedRow, PackedState, Segments
from engine.request import GenerationRequest
from engine.sequence import Sequence
from engine.tiny import clip_tokenizer, llama_tokenizer
from engine.vae import fast_decode, fast_pieces, temporal_tile_pieces

_LLAMA_LAYERS_SKIPPED = 2  # the pipeline reads the hidden states three from the end
_CLIP_LENGTH = 77


class HunyuanVideoAdapter(FamilyAdapter):
    family = "hunyuanvideo"
    pipeline_class = "HunyuanVideoPipeline"
    default_max_sequence_length = 256

    def __init__(self, pipe, options=None) -> None:
        super().__init__(pipe, options)
        self.prompt_template = dict(self.options.get("prompt_template", DEFAULT_PROMPT_TEMPLATE))
        self.true_cfg_scale = float(self.options.get("true_cfg_scale", 1.0))
        config = self.transformer.config
        self.spatial_multiple = pipe.vae_scale_factor_spatial * config.patch_size
        self.temporal_factor = pipe.vae_scale_factor_temporal
        self._packed = HunyuanVideoPackedForward(self.transformer) if _packs(self.transformer) else None

    def packed_forward(self, model: torch.nn.Module) -> PackedForward | None:
        return self._packed if model is self.transformer else None

    def cache_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        # Dual-stream blocks, then single-stream ones: one chain for first-block caching.
        return [*model.transformer_blocks, *model.single_transformer_blocks]

    def uses_cfg(self, request: GenerationRequest) -> bool:
        # Guidance is an input of the distilled transformer; a negative row runs only under "true CFG".
        return self.true_cfg_scale > 1.0

    def guide(self, seq: Sequence, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
        return cond if uncond is None else uncond + self.true_cfg_scale * (cond - uncond)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[TextEmbedding]:
        pipe = self.pipe
        template = self.prompt_template
        crop_start = template.get("crop_start")
        if crop_start is None:
            ids = pipe.tokenizer(template["template"], padding="max_length", return_tensors="pt").input_ids
            crop_start = ids.shape[-1] - 2
        inputs = pipe.tokenizer(
            [template["template"].format(p) for p in prompts],
            max_length=self.max_sequence_length + crop_start,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        device = pipe.text_encoder.device
        ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device)
        out = pipe.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-(_LLAMA_LAYERS_SKIPPED + 1)].to(dtype=pipe.text_encoder.dtype)
        if crop_start > 0:
            hidden, mask = hidden[:, crop_start:], mask[:, crop_start:]
        clip_ids = pipe.tokenizer_2(
            prompts, padding="max_length", max_length=_CLIP_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        pooled = pipe.text_encoder_2(clip_ids.to(pipe.text_encoder_2.device), output_hidden_states=False).pooler_output
        dtype = self.dtype
        return [
            TextEmbedding(
                embeds=hidden[i : i + 1].to(self.device, dtype),
                mask=mask[i : i + 1].to(self.device, dtype),
                pooled=pooled[i : i + 1].to(self.device, dtype),
            )
            for i in range(len(prompts))
        ]

    def prepare_latents(self, request: GenerationRequest, generator: torch.Generator) -> torch.Tensor:
        pipe = self.pipe
        shape = (
            1,
            self.transformer.config.in_channels,
            (request.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            request.height // pipe.vae_scale_factor_spatial,
            request.width // pipe.vae_scale_factor_spatial,
        )
        return self.randn(shape, generator)

    def set_timesteps(self, seq: Sequence) -> None:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        steps = seq.request.num_inference_steps
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas)
        scheduler.set_begin_index(0)
        seq.scheduler, seq.timesteps = scheduler, timesteps

    def tokens_per_row(self, seq: Sequence) -> int:
        if self._packed is not None:
            return self._packed.tokens(tuple(seq.latents.shape[1:]), seq.cond)
        _, _, f, h, w = seq.latents.shape
        config = self.transformer.config
        return (f // config.patch_size_t) * (h // config.patch_size) * (w // config.patch_size) + seq.cond.length

    def model_call(self, seqs: list[Sequence]) -> ModelCall:
        guided = [s for s in seqs if s.uncond is not None]
        rows = seqs + guided
        texts = [s.cond for s in seqs] + [s.uncond for s in guided]
        latents = stack_rows([s.latents for s in rows])
        # Each request's own guidance scale, embedded per sample as the pipeline does for a whole batch.
        guidance = torch.tensor([s.request.guidance_scale for s in rows], dtype=self.dtype, device=self.device)
        kwargs = dict(
            hidden_states=latents.to(self.dtype),
            timestep=torch.stack([s.timestep for s in rows]).to(latents.dtype),
            encoder_hidden_states=stack_rows([t.embeds for t in texts]),
            encoder_attention_mask=stack_rows([t.mask for t in texts]),
            pooled_projections=stack_rows([t.pooled for t in texts]),
            guidance=guidance * 1000.0,
            attention_kwargs=None,
        )
        return ModelCall(model=self.transformer, kwargs=kwargs, rows=len(rows))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seqs: list[Sequence]) -> list[np.ndarray]:
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        with fast_decode(self.vae):  # engine/vae.py
            return self.to_frames(self.vae.decode(latents, return_dict=False)[0])

    def decode_stream(self, latents: torch.Tensor, seq: Sequence, long: bool) -> Iterator[np.ndarray]:
        """Temporal tiles (16 frames, stride 12) blended over their overlap, as the VAE decodes long latents by
        default (framewise decoding): the frames of `decode`, exactly; a latent within one tile in one piece."""
        vae = self.vae
        tile = vae.tile_sample_min_num_frames // vae.temporal_compression_ratio
        if not ((long or vae.use_framewise_decoding) and latents.shape[2] > tile):
            yield from self.decode(latents, [seq])
            return
        for piece in fast_pieces(vae, temporal_tile_pieces(vae, latents.to(vae.dtype) / vae.config.scaling_factor)):
            yield self.to_frames(piece)[0]


def _packs(model: torch.nn.Module) -> bool:
    """Whether the engine can serve this transformer packed: text-to-video only (no image condition)."""
    return model.config.image_condition_type is None


@dataclass
class HunyuanVideoText:
    """One prompt's step-independent inputs to the token refiner, and how many refined tokens the blocks see."""

    pooled_mean: torch.Tensor  # (1, D_text): the masked mean the refiner's conditioning takes
    tokens: torch.Tensor  # (1, S, D): `proj_in` of the positions the refiner computes
    key_bias: torch.Tensor | None  # (S,) 0 / -inf: the refiner's keys, when not simply all S positions
    query_valid: torch.Tensor | None  # (S,) bool: positions that attend (the others see only position 0)
    block_tokens: int  # the first `block_tokens` refined positions are the blocks' text


class HunyuanVideoPackedForward:
    """HunyuanVideoTransformer3DModel's forward over packed rows, on the model's own modules and weights.

    Follows `HunyuanVideoTransformer3DModel.forward`, its token refiner, dual-stream and single-stream blocks.
    Each row is `[text; video]` in `hidden`; dual-stream blocks gather each stream's tokens for their own weights,
    single-stream blocks run on all tokens at once. Every row keeps its own timestep, guidance and pooled-text
    conditioning, its own rotary grid (text tokens take the identity rotation) and its own text length.

    The text a row's blocks see is what diffusers' attention mask lets through: the first `mask.sum()` refined
    positions. With right padding (HunyuanVideo's tokenizer) those are the prompt's tokens, refined among
    themselves; with left padding they are not, and the refiner runs over the whole padded prompt with
    diffusers' mask (valid positions attend to valid ones and position 0, padding attends to position 0 only).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.num_blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
        self._rope: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._streams: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def text_kv(self, text: TextEmbedding) -> HunyuanVideoText:
        """The refiner's inputs that do not depend on the step: pooled mean, projected tokens, attention pattern."""
        embeds = text.embeds
        mask = text.mask if text.mask is not None else embeds.new_ones(embeds.shape[:2])
        weights = mask.float().unsqueeze(-1)
        pooled_mean = ((embeds * weights).sum(dim=1) / weights.sum(dim=1)).to(embeds.dtype)
        valid = mask[0].bool()
        count = int(valid.sum())
        key_bias = query_valid = None
        if bool(valid[:count].all()):  # right padding: the prompt's tokens are the first ones
            positions = embeds[:, :count]
        else:
            positions = embeds
            keys = valid.clone()
            keys[0] = True  # diffusers' refiner mask always lets position 0 be a key
            key_bias = torch.zeros(valid.shape, dtype=torch.float32, device=embeds.device)
            key_bias[~keys] = -math.inf
            query_valid = valid
        with torch.no_grad():
            tokens = self.model.context_embedder.proj_in(positions)
        return HunyuanVideoText(pooled_mean, tokens, key_bias, query_valid, count)

    def tokens(self, latent_shape: tuple[int, ...], text: TextEmbedding) -> int:
        _, f, h, w = latent_shape[-4:]
        config = self.model.config
        count = text.length if text.mask is None else int(text.mask.sum())
        return (f // config.patch_size_t) * (h // config.patch_size) * (w // config.patch_size) + count

    # --- forward -------------------------------------------------------------------------------------

    def _rotary(self, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own rotary tables (n, d) for one latent shape (they depend on F x H x W only)."""
        if shape not in self._rope:
            if len(self._rope) >= 64:  # a few shapes are in use at a time; keep memory flat
                self._rope.pop(next(iter(self._rope)))
            self._rope[shape] = self.model.rope(torch.empty((1, 0, *shape), device=device))
        return self._rope[shape]

    def _refine(self, texts: list[HunyuanVideoText], timesteps: torch.Tensor) -> list[torch.Tensor]:
        """HunyuanVideoTokenRefiner over every row's prompt at once; per row the (1, n, D) text the blocks see."""
        refiner = self.model.context_embedder
        temb = refiner.time_text_embed(timesteps, torch.cat([t.pooled_mean for t in texts]))
        hidden = torch.cat([t.tokens for t in texts], dim=1)
        segments = Segments(tuple(t.tokens.shape[1] for t in texts))
        masked = any(t.key_bias is not None for t in texts)
        if masked:
            query_valid = torch.cat(
                [
                    t.query_valid if t.query_valid is not None else t.tokens.new_ones(n, dtype=torch.bool)
                    for t, n in zip(texts, segments.lengths, strict=True)
                ]
            ).view(1, -1, 1, 1)
            first = torch.tensor(segments.offsets[:-1], device=hidden.device).repeat_interleave(
                torch.tensor(segments.lengths, device=hidden.device)
            )
        for block in refiner.token_refiner.refiner_blocks:
            attn = block.attn
            norm = block.norm1(hidden)
            query = attn.to_q(norm).unflatten(2, (attn.heads, -1))
            key = attn.to_k(norm).unflatten(2, (attn.heads, -1))
            value = attn.to_v(norm).unflatten(2, (attn.heads, -1))
            if masked:
                keys, values = segments.split(key), segments.split(value)
                out = cross_attention(query, segments, keys, values, [t.key_bias for t in texts])
                # A padding position's only key is position 0: its output is position 0's value.
                out = torch.where(query_valid, out, value.index_select(1, first))
            else:
                out = self_attention(query, key, value, segments)
            out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3)))
            gate_msa, gate_mlp = block.norm_out(temb)
            hidden = hidden + out * segments.expand(gate_msa[:, 0])
            hidden = hidden + block.ff(block.norm2(hidden)) * segments.expand(gate_mlp[:, 0])
        return [part[:, : t.block_tokens] for part, t in zip(segments.split(hidden), texts, strict=True)]

    @torch.no_grad()
    def embed(self, rows: list[PackedRow]) -> PackedState:
        model = self.model
        config = model.config
        p, pt = config.patch_size, config.patch_size_t
        proj = model.x_embedder.proj
        dtype = proj.weight.dtype
        shapes = [tuple(row.latents.shape[-4:]) for row in rows]
        # A request's conditional and unconditional rows share their latents: patch them once.
        patches: dict[int, torch.Tensor] = {}
        for row, (c, f, h, w) in zip(rows, shapes, strict=True):
            if id(row.latents) not in patches:  # the stride-(p_t, p, p) Conv3d, as one matrix product
                x = row.latents.reshape(c, f // pt, pt, h // p, p, w // p, p).permute(1, 3, 5, 0, 2, 4, 6)
                patches[id(row.latents)] = x.reshape((f // pt) * (h // p) * (w // p), -1).to(dtype)
        firsts = list(patches)
        video = F.linear(torch.cat([patches[k] for k in firsts]), proj.weight.flatten(1), proj.bias)
        video_of = dict(zip(firsts, video.split([patches[k].shape[0] for k in firsts]), strict=True))

        timesteps = torch.stack([row.timestep.reshape(()) for row in rows]).to(rows[0].latents.dtype)
        pooled = torch.cat([row.text.pooled for row in rows])
        guidance = None
        if model.time_text_embed.guidance_embedder is not None:
            # The pipeline embeds its guidance scale x 1000, in the transformer's dtype.
            scales = [row.guidance for row in rows]
            if any(scale is None for scale in scales):
                raise ValueError("HunyuanVideo's guidance-distilled transformer needs each row's guidance scale")
            guidance = torch.tensor(scales, dtype=pooled.dtype, device=pooled.device) * 1000.0
        temb, _ = model.time_text_embed(timesteps, pooled, guidance)
        texts = [row.text_kv if row.text_kv is not None else self.text_kv(row.text) for row in rows]
        texts = self._refine(texts, timesteps)

        parts, cos, sin, lengths = [], [], [], []
        for row, text, shape in zip(rows, texts, shapes, strict=True):
            tokens = video_of[id(row.latents)]
            parts += [text, tokens.unsqueeze(0)]
            lengths.append(text.shape[1] + tokens.shape[0])
            # Text tokens take the identity rotation (cos 1, sin 0): x * 1 + y * 0 is x exactly.
            row_cos, row_sin = self._rotary(shape[1:], video.device)
            cos += [row_cos.new_ones(text.shape[1], row_cos.shape[1]), row_cos]
            sin += [row_sin.new_zeros(text.shape[1], row_sin.shape[1]), row_sin]
        device = video.device
        is_text = torch.cat([torch.arange(n, device=device) < t.shape[1] for n, t in zip(lengths, texts, strict=True)])
        return PackedState(
            hidden=torch.cat(parts, dim=1),
            tokens=Segments(tuple(lengths)),
            shapes=shapes,
            per_token={
                "is_text": is_text.view(1, -1, 1),
                "rope_cos": torch.cat(cos).to(device)[None],
                "rope_sin": torch.cat(sin).to(device)[None],
            },
            per_row={"temb": list(temb), "text_tokens": [t.shape[1] for t in texts]},
        )

    @torch.no_grad()
    def block(self, index: int, state: PackedState) -> PackedState:
        dual = len(self.model.transformer_blocks)
        if index < dual:
            hidden = self._dual_stream(self.model.transformer_blocks[index], state)
        else:
            hidden = self._single_stream(self.model.single_transformer_blocks[index - dual], state)
        return PackedState(hidden, state.tokens, state.shapes, state.per_token, state.per_row)

    def _stream_index(self, state: PackedState) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of the text tokens and of the video tokens in `hidden`, row by row."""
        texts = tuple(state.per_row["text_tokens"])
        key = (state.tokens.lengths, texts, state.hidden.device)
        if key not in self._streams:
            if len(self._streams) >= 64:  # a few layouts are in use at a time; keep memory flat
                self._streams.pop(next(iter(self._streams)))
            text, video = [], []
            for row, t in enumerate(texts):
                start, end = state.tokens.offsets[row], state.tokens.offsets[row + 1]
                text.append(torch.arange(start, start + t))
                video.append(torch.arange(start + t, end))
            self._streams[key] = (torch.cat(text).to(state.hidden.device), torch.cat(video).to(state.hidden.device))
        return self._streams[key]

    def _dual_stream(self, block: Any, state: PackedState) -> torch.Tensor:
        """HunyuanVideoTransformerBlock: text and video keep their own weights and meet in joint attention."""
        temb = torch.stack(state.per_row["temb"])
        text_index, video_index = self._stream_index(state)
        texts = Segments(tuple(state.per_row["text_tokens"]))
        videos = Segments(tuple(n - t for n, t in zip(state.tokens.lengths, texts.lengths, strict=True)))
        streams = []
        for index, segments, norm in ((video_index, videos, block.norm1), (text_index, texts, block.norm1_context)):
            x = state.hidden.index_select(1, index)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
                segments.expand(c) for c in norm.linear(norm.silu(temb)).chunk(6, dim=1)
            )
            streams.append((x, norm.norm(x) * (1 + scale_msa) + shift_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp))
        (video, norm_video, *video_mod), (text, norm_text, *text_mod) = streams

        attn = block.attn
        projections = (
            (attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k, norm_video, video_index),
            (
                attn.add_q_proj,
                attn.add_k_proj,
                attn.add_v_proj,
                attn.norm_added_q,
                attn.norm_added_k,
                norm_text,
                text_index,
            ),
        )
        shape = (1, state.tokens.total, attn.heads, -1)
        query = key = value = None
        for to_q, to_k, to_v, norm_q, norm_k, x, index in projections:
            q, k, v = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (to_q, to_k, to_v))
            q = q if norm_q is None else norm_q(q)
            k = k if norm_k is None else norm_k(k)
            if query is None:
                query, key, value = (t.new_empty(shape[:3] + t.shape[-1:]) for t in (q, k, v))
            query.index_copy_(1, index, q)
            key.index_copy_(1, index, k)
            value.index_copy_(1, index, v)
        cos, sin = state.per_token["rope_cos"], state.per_token["rope_sin"]
        query, key = _apply_rotary(query, cos, sin), _apply_rotary(key, cos, sin)
        out = self_attention(query, key, value, state.tokens).flatten(2, 3).to(query.dtype)
        attn_video = attn.to_out[1](attn.to_out[0](out.index_select(1, video_index)))
        attn_text = attn.to_add_out(out.index_select(1, text_index))

        hidden = torch.empty_like(state.hidden)
        for x, attn_out, (gate_msa, shift_mlp, scale_mlp, gate_mlp), norm2, ff, index in (
            (video, attn_video, video_mod, block.norm2, block.ff, video_index),
            (text, attn_text, text_mod, block.norm2_context, block.ff_context, text_index),
        ):
            x = x + attn_out * gate_msa
            x = x + gate_mlp * ff(norm2(x) * (1 + scale_mlp) + shift_mlp)
            hidden.index_copy_(1, index, x)
        return hidden

    def _single_stream(self, block: Any, state: PackedState) -> torch.Tensor:
        """HunyuanVideoSingleTransformerBlock: one set of weights for all tokens, attention within each row."""
        hidden, tokens = state.hidden, state.tokens
        temb = torch.stack(state.per_row["temb"])
        shift, scale, gate = (tokens.expand(c) for c in block.norm.linear(block.norm.silu(temb)).chunk(3, dim=1))
        norm = block.norm.norm(hidden) * (1 + scale) + shift
        mlp = block.act_mlp(block.proj_mlp(norm))
        attn = block.attn
        query = attn.to_q(norm).unflatten(2, (attn.heads, -1))
        key = attn.to_k(norm).unflatten(2, (attn.heads, -1))
        value = attn.to_v(norm).unflatten(2, (attn.heads, -1))
        query = query if attn.norm_q is None else attn.norm_q(query)
        key = key if attn.norm_k is None else attn.norm_k(key)
        cos, sin = state.per_token["rope_cos"], state.per_token["rope_sin"]
        query, key = _apply_rotary(query, cos, sin), _apply_rotary(key, cos, sin)
        out = self_attention(query, key, value, tokens).flatten(2, 3).to(query.dtype)
        return hidden + gate * block.proj_out(torch.cat([out, mlp], dim=2))

    @torch.no_grad()
    def head(self, state: PackedState) -> list[torch.Tensor]:
        model, config = self.model, self.model.config
        texts = state.per_row["text_tokens"]
        video = [part[:, t:] for part, t in zip(state.tokens.split(state.hidden), texts, strict=True)]
        tokens = Segments(tuple(v.shape[1] for v in video))
        hidden = torch.cat(video, dim=1)
        temb = torch.stack(state.per_row["temb"])
        norm = model.norm_out
        scale, shift = norm.linear(norm.silu(temb).to(hidden.dtype)).chunk(2, dim=1)
        hidden = norm.norm(hidden) * (1 + tokens.expand(scale)) + tokens.expand(shift)
        hidden = model.proj_out(hidden)
        p, pt = config.patch_size, config.patch_size_t
        outputs = []
        for part, (_, f, h, w) in zip(tokens.split(hidden), state.shapes, strict=True):
            part = part.reshape(1, f // pt, h // p, w // p, -1, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
            outputs.append(part.flatten(6, 7).flatten(4, 5).flatten(2, 3))
        return outputs


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' `apply_rotary_emb` (interleaved pairs) on (1, T, heads, d) with per-token (1, T, d) tables."""
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos.unsqueeze(2) + rotated.float() * sin.unsqueeze(2)).to(x.dtype)


# --- layer split: the output head the last stage runs (engine.layer_split) ----------------------------------------


def _layer_split_tail(model, hidden, call, extras, shape):
    temb = call_arg(call, 2, "temb")
    batch, _, frames, height, width = shape
    p, p_t = model.config.patch_size, model.config.patch_size_t
    hidden = model.norm_out(hidden, temb)
    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
    hidden = hidden.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)


# --- tiny random-weight pipeline (engine.tiny) --------------------------------------------------------------------


def _tiny_pipeline(small: bool = False):
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer, tokenizer_2 = llama_tokenizer(), clip_tokenizer()
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


# --- the reference pipeline's own arguments (engine.reference) ----------------------------------------------------


def _pipeline_kwargs(kwargs: dict[str, Any], options: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
    """HunyuanVideoPipeline's own arguments: true CFG and the prompt template, as the registry entry sets them."""
    if float(options.get("true_cfg_scale", 1.0)) > 1.0:
        kwargs["true_cfg_scale"] = options["true_cfg_scale"]
    else:
        kwargs.pop("negative_prompt")  # embedded guidance: no negative branch unless true CFG is asked for
    if "prompt_template" in options:
        kwargs["prompt_template"] = options["prompt_template"]
    return kwargs


FAMILY = FamilyParts(
    adapter=HunyuanVideoAdapter,
    layout=Layout(
        ("transformer_blocks", "single_transformer_blocks"),
        ("norm_out", "proj_out"),
        _layer_split_tail,
        packed=HunyuanVideoPackedForward,
    ),
    tiny={"hunyuanvideo": _tiny_pipeline},
    bench_shapes=((9, 17), ((32, 32), (32, 48))),
    mixed_bench_shapes=((5, 9, 13, 17), ((32, 32), (32, 48), (48, 32), (48, 48))),
    pipeline_kwargs=_pipeline_kwargs,
    # The tiny tokenizers know no chat template: the prompt as it is.
    tiny_options={"prompt_template": {"template": "{}", "crop_start": 0}},
)
