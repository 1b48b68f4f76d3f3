"""CogVideoX (1.0 and 1.5) over diffusers' CogVideoXPipeline, and its packed forward.

Stages follow `CogVideoXPipeline.__call__`: T5 embeddings padded to the transformer's text length, latents
laid out (B, F, C, H, W), rotary embeddings per shape, DDIM or DPM steps, optional dynamic CFG.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import CogVideoXDPMScheduler
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from engine.attention import self_attention
from engine.families.base import FamilyAdapter, FamilyParts, ModelCall, TextEmbedding, stack_rows
from engine.layer_split.layout import Layout, call_arg
from engine.packing import PackedForward, PackedRow, PackedState, Segments
from engine.request import GenerationRequest, InvalidRequest
from engine.sequence import Sequence
from engine.tiny import t5_encoder, t5_tokenizer
from engine.vae import cogvideox_pieces, fast_decode, fast_pieces


class CogVideoXAdapter(FamilyAdapter):
    family = "cogvideox"
    pipeline_class = "CogVideoXPipeline"
    default_max_sequence_length = 226
    state_extra = ("old_pred_original_sample",)  # the DPM scheduler's previous x0 estimate

    def __init__(self, pipe, options=None) -> None:
        super().__init__(pipe, options)
        config = self.transformer.config
        # The transformer's positional table fixes the text length; a different one fails inside the model.
        self.max_sequence_length = int(self.options.get("max_sequence_length", config.max_text_seq_length))
        self.use_dynamic_cfg = bool(self.options.get("use_dynamic_cfg", False))
        self.spatial_multiple = pipe.vae_scale_factor_spatial * config.patch_size
        self.temporal_factor = pipe.vae_scale_factor_temporal
        self.text_dtype = pipe.text_encoder.dtype
        self._rotary: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        supported = CogVideoXPackedForward.supports(self.transformer)
        self._packed = CogVideoXPackedForward(self.transformer) if supported else None

    def packed_forward(self, model: torch.nn.Module) -> PackedForward | None:
        return self._packed if model is self.transformer else None

    def check_request(self, request: GenerationRequest) -> None:
        super().check_request(request)
        if ((request.num_frames - 1) // self.temporal_factor) % 2:
            # The VAE decodes an even latent count to 4k frames, not the 4k+1 asked for.
            raise InvalidRequest("num_frames", f"must be {2 * self.temporal_factor}k+1 for this model")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[TextEmbedding]:
        pipe = self.pipe
        ids = self.tokenize(prompts).input_ids
        hidden = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]
        hidden = hidden.to(dtype=self.text_dtype, device=self.device)
        return [TextEmbedding(embeds=row.unsqueeze(0)) for row in hidden]

    def prepare_latents(self, request: GenerationRequest, generator: torch.Generator) -> torch.Tensor:
        pipe = self.pipe
        latent_frames = (request.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        patch_t = self.transformer.config.patch_size_t
        # CogVideoX 1.5 patches time in pairs: the pipeline pads the front and drops it after decoding.
        extra = patch_t - latent_frames % patch_t if patch_t is not None and latent_frames % patch_t else 0
        shape = (
            1,
            latent_frames + extra,
            self.transformer.config.in_channels,
            request.height // pipe.vae_scale_factor_spatial,
            request.width // pipe.vae_scale_factor_spatial,
        )
        latents = self.randn(shape, generator).to(self.text_dtype)
        return latents * pipe.scheduler.init_noise_sigma

    def set_timesteps(self, seq: Sequence) -> None:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(seq.request.num_inference_steps, device=self.device)
        seq.scheduler, seq.timesteps = scheduler, scheduler.timesteps
        seq.extra["additional_frames"] = seq.latents.shape[1] - (
            (seq.request.num_frames - 1) // self.temporal_factor + 1
        )
        seq.extra["old_pred_original_sample"] = None
        seq.extra["step_kwargs"] = self.pipe.prepare_extra_step_kwargs(seq.generator, 0.0)

    def tokens_per_row(self, seq: Sequence) -> int:
        if self._packed is not None:
            return self._packed.tokens(tuple(seq.latents.shape[1:]), seq.cond)
        _, f, _, h, w = seq.latents.shape
        p, pt = self.transformer.config.patch_size, self.transformer.config.patch_size_t or 1
        return (f // pt) * (h // p) * (w // p) + seq.cond.length

    def rotary_embedding(self, seq: Sequence) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        request = seq.request
        key = (request.height, request.width, seq.latents.shape[1])
        if key not in self._rotary:
            if len(self._rotary) >= 16:  # a few shapes are in use at a time; keep memory flat
                self._rotary.pop(next(iter(self._rotary)))
            self._rotary[key] = self.pipe._prepare_rotary_positional_embeddings(*key, self.device)
        return self._rotary[key]

    def model_call(self, seqs: list[Sequence]) -> ModelCall:
        guided = [s for s in seqs if s.uncond is not None]
        rows = seqs + guided
        latents = stack_rows([s.latents for s in rows])
        latents = seqs[0].scheduler.scale_model_input(latents, seqs[0].timestep)
        kwargs = dict(
            hidden_states=latents,
            encoder_hidden_states=stack_rows([s.cond.embeds for s in seqs] + [s.uncond.embeds for s in guided]),
            timestep=torch.stack([s.timestep for s in rows]),
            image_rotary_emb=self.rotary_embedding(seqs[0]),
            attention_kwargs=None,
        )
        return ModelCall(model=self.transformer, kwargs=kwargs, rows=len(rows))

    def guidance_scale(self, seq: Sequence) -> float:
        scale = seq.request.guidance_scale
        if self.use_dynamic_cfg:
            n, t = seq.num_steps, seq.timestep.item()
            scale = 1 + scale * ((1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2)
        return scale

    def guide(self, seq: Sequence, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
        cond = cond.float()
        if uncond is None:
            return cond
        uncond = uncond.float()
        return uncond + self.guidance_scale(seq) * (cond - uncond)

    def scheduler_step(self, seq: Sequence, noise_pred: torch.Tensor) -> None:
        kwargs = seq.extra["step_kwargs"]
        if isinstance(seq.scheduler, CogVideoXDPMScheduler):
            previous = seq.timesteps[seq.step_index - 1] if seq.step_index > 0 else None
            latents, seq.extra["old_pred_original_sample"] = seq.scheduler.step(
                noise_pred,
                seq.extra["old_pred_original_sample"],
                seq.timestep,
                previous,
                seq.latents,
                **kwargs,
                return_dict=False,
            )
        else:
            latents = seq.scheduler.step(noise_pred, seq.timestep, seq.latents, **kwargs, return_dict=False)[0]
        seq.latents = latents.to(self.text_dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seqs: list[Sequence]) -> list[np.ndarray]:
        with fast_decode(self.vae):  # engine/vae.py
            return self.to_frames(self.vae.decode(self._vae_input(latents, seqs[0])).sample)

    def _vae_input(self, latents: torch.Tensor, seq: Sequence) -> torch.Tensor:
        """(B, C, F, H, W) scaled for the VAE, without CogVideoX 1.5's padding frames, as the pipeline decodes."""
        latents = latents[:, seq.extra["additional_frames"] :].permute(0, 2, 1, 3, 4)
        return 1 / self.pipe.vae_scaling_factor_image * latents

    def decode_stream(self, latents: torch.Tensor, seq: Sequence, long: bool) -> Iterator[np.ndarray]:
        """Two latent frames at a time through the VAE's convolution cache: the frames of `decode`, exactly."""
        for piece in fast_pieces(self.vae, cogvideox_pieces(self.vae, self._vae_input(latents, seq))):
            yield self.to_frames(piece)[0]


class CogVideoXPackedForward:
    """CogVideoXTransformer3DModel's forward over packed rows, on the model's own modules and weights.

    Follows `CogVideoXTransformer3DModel.forward` and `CogVideoXBlock.forward`. Each row is `[text; video]`, as the
    model lays it out; the blocks use the same weights for both streams and differ only in their modulation, so
    every token-wise layer runs once over all rows' tokens and each token takes its row's text or video modulation.
    A row's positions (sin-cos table or rotary table) come from its own F x H x W; attention stays within the row.
    Rows keep the model's latent layout: `PackedRow.latents` and `PackedState.shapes` are (F, C, H, W).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.num_blocks = len(model.transformer_blocks)
        self._positions: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Text-to-video CogVideoX with diffusers' own attention: no `ofs` (image-to-video) input, no fused QKV."""
        fused = any(getattr(block.attn1, "fused_projections", False) for block in model.transformer_blocks)
        return model.ofs_embedding is None and not fused

    def text_kv(self, text: TextEmbedding) -> torch.Tensor:
        """The prompt through the patch embedder's text projection, (1, L, D): the same at every step."""
        with torch.no_grad():
            return self.model.patch_embed.text_proj(text.embeds)

    def tokens(self, latent_shape: tuple[int, ...], text: TextEmbedding) -> int:
        return self._video_tokens(latent_shape) + text.length

    def _video_tokens(self, latent_shape: tuple[int, ...]) -> int:
        f, _, h, w = latent_shape[-4:]
        p, pt = self.model.config.patch_size, self.model.config.patch_size_t or 1
        return (f // pt) * (h // p) * (w // p)

    # --- forward -------------------------------------------------------------------------------------

    def _row_positions(self, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
        """A latent shape's video positions: the sin-cos table (n, D) added after patching, or rotary (cos, sin)."""
        if shape not in self._positions:
            if len(self._positions) >= 64:  # a few shapes are in use at a time; keep memory flat
                self._positions.pop(next(iter(self._positions)))
            f, _, h, w = shape
            embed = self.model.patch_embed
            if self.model.config.use_rotary_positional_embeddings:
                self._positions[shape] = self._rotary(f, h, w, device)
            else:
                frames = (f - 1) * embed.temporal_compression_ratio + 1
                if (embed.sample_height, embed.sample_width, embed.sample_frames) == (h, w, frames):
                    table = embed.pos_embedding
                else:
                    table = embed._get_positional_embeddings(h, w, frames, device=device)
                self._positions[shape] = (table[0, embed.max_text_seq_length :],)
        return self._positions[shape]

    def _rotary(self, frames: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables `CogVideoXPipeline._prepare_rotary_positional_embeddings` gives a latent grid."""
        config = self.model.config
        p, pt = config.patch_size, config.patch_size_t
        grid = (height // p, width // p)
        base_height, base_width = config.sample_height // p, config.sample_width // p
        if pt is None:  # CogVideoX 1.0: the grid cropped into the base grid
            crops = get_resize_crop_region_for_grid(grid, base_width, base_height)
            tables = get_3d_rotary_pos_embed(config.attention_head_dim, crops, grid, frames, device=device)
        else:  # CogVideoX 1.5: a slice of the base grid, time in patches of p_t
            tables = get_3d_rotary_pos_embed(
                config.attention_head_dim,
                None,
                grid,
                (frames + pt - 1) // pt,
                grid_type="slice",
                max_size=(base_height, base_width),
                device=device,
            )
        return tuple(tables)

    def _patches(self, latents: torch.Tensor) -> torch.Tensor:
        """(F, C, H, W) -> (n, C*p*p) (or 1.5's (n, p_t*C*p*p)), in the token order of the patch embedder."""
        f, c, h, w = latents.shape
        p, pt = self.model.config.patch_size, self.model.config.patch_size_t
        if pt is None:  # the stride-p Conv2d, as one matrix product over flattened patches
            x = latents.reshape(f, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
            return x.reshape(f * (h // p) * (w // p), c * p * p)
        x = latents.permute(0, 2, 3, 1).reshape(f // pt, pt, h // p, p, w // p, p, c)
        return x.permute(0, 2, 4, 6, 1, 3, 5).reshape((f // pt) * (h // p) * (w // p), -1)

    def _embed_video(self, patches: torch.Tensor) -> torch.Tensor:
        proj = self.model.patch_embed.proj
        if isinstance(proj, torch.nn.Conv2d):
            return F.linear(patches, proj.weight.reshape(proj.weight.shape[0], -1), proj.bias)
        return proj(patches)

    @torch.no_grad()
    def embed(self, rows: list[PackedRow]) -> PackedState:
        model = self.model
        dtype = model.patch_embed.text_proj.weight.dtype
        device = rows[0].latents.device
        shapes = [tuple(row.latents.shape[-4:]) for row in rows]
        # A request's conditional and unconditional rows share their latents: patch them once.
        patches: dict[int, torch.Tensor] = {}
        for row, shape in zip(rows, shapes, strict=True):
            patches.setdefault(id(row.latents), self._patches(row.latents.reshape(shape).to(dtype)))
        firsts = list(patches)
        video = self._embed_video(torch.cat([patches[k] for k in firsts])).split([patches[k].shape[0] for k in firsts])
        video_of = dict(zip(firsts, video, strict=True))
        positions = [self._row_positions(shape, device) for shape in shapes]
        rotary = model.config.use_rotary_positional_embeddings

        parts, texts, lengths = [], [], []
        for row, position in zip(rows, positions, strict=True):
            text = row.text_kv if row.text_kv is not None else self.text_kv(row.text)
            tokens = video_of[id(row.latents)]
            if not rotary:
                tokens = tokens + position[0].to(tokens.dtype)
            parts += [text, tokens.unsqueeze(0)]
            texts.append(text.shape[1])
            lengths.append(text.shape[1] + tokens.shape[0])
        hidden = torch.cat(parts, dim=1)
        is_text = torch.cat([torch.arange(n, device=device) < t for n, t in zip(lengths, texts, strict=True)])

        # The schedulers' `scale_model_input` (DDIM, DPM) returns the latents unchanged: nothing to apply here.
        time_proj = model.time_proj(torch.stack([row.timestep.reshape(()) for row in rows])).to(dtype)
        emb = model.time_embedding(time_proj, None)
        per_token = {"is_text": is_text.view(1, -1, 1)}
        if rotary:
            # Text tokens get the identity rotation (cos 1, sin 0): x * 1 + y * 0 is x exactly.
            cos, sin = [], []
            for t, (row_cos, row_sin) in zip(texts, positions, strict=True):
                cos += [row_cos.new_ones(t, row_cos.shape[1]), row_cos]
                sin += [row_sin.new_zeros(t, row_sin.shape[1]), row_sin]
            per_token["rope_cos"], per_token["rope_sin"] = torch.cat(cos)[None], torch.cat(sin)[None]
        return PackedState(
            hidden=hidden,
            tokens=Segments(tuple(lengths)),
            shapes=shapes,
            per_token=per_token,
            per_row={"emb": list(emb), "text_tokens": texts},
        )

    def _modulation(self, linear: torch.Tensor, state: PackedState) -> list[torch.Tensor]:
        """A norm's (R, 6D) projection -> per token (1, T, D) shift, scale and gate: the text half for text tokens."""
        chunks = linear.chunk(6, dim=1)
        is_text = state.per_token["is_text"]
        return [
            torch.where(is_text, state.tokens.expand(chunks[i + 3]), state.tokens.expand(chunks[i])) for i in range(3)
        ]

    @torch.no_grad()
    def block(self, index: int, state: PackedState) -> PackedState:
        block = self.model.transformer_blocks[index]
        hidden = state.hidden
        emb = torch.stack(state.per_row["emb"])

        shift, scale, gate = self._modulation(block.norm1.linear(block.norm1.silu(emb)), state)
        norm = block.norm1.norm(hidden) * (1 + scale) + shift
        hidden = hidden + gate * self._attention(block.attn1, norm, state)

        shift, scale, gate = self._modulation(block.norm2.linear(block.norm2.silu(emb)), state)
        norm = block.norm2.norm(hidden) * (1 + scale) + shift
        hidden = hidden + gate * block.ff(norm)
        return PackedState(hidden, state.tokens, state.shapes, state.per_token, state.per_row)

    def _attention(self, attn: Any, x: torch.Tensor, state: PackedState) -> torch.Tensor:
        """CogVideoXAttnProcessor2_0 over packed rows."""
        query = attn.to_q(x).unflatten(2, (attn.heads, -1))
        key = attn.to_k(x).unflatten(2, (attn.heads, -1))
        value = attn.to_v(x).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if "rope_cos" in state.per_token:
            cos, sin = state.per_token["rope_cos"], state.per_token["rope_sin"]
            query, key = _apply_rotary(query, cos, sin), _apply_rotary(key, cos, sin)
        out = self_attention(query, key, value, state.tokens).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))

    @torch.no_grad()
    def head(self, state: PackedState) -> list[torch.Tensor]:
        model, config = self.model, self.model.config
        texts = state.per_row["text_tokens"]
        video = [part[:, t:] for part, t in zip(state.tokens.split(state.hidden), texts, strict=True)]
        tokens = Segments(tuple(v.shape[1] for v in video))
        hidden = model.norm_final(torch.cat(video, dim=1))
        emb = torch.stack(state.per_row["emb"])
        shift, scale = model.norm_out.linear(model.norm_out.silu(emb)).chunk(2, dim=1)
        hidden = model.norm_out.norm(hidden) * (1 + tokens.expand(scale)) + tokens.expand(shift)
        hidden = model.proj_out(hidden)
        p, pt = config.patch_size, config.patch_size_t
        outputs = []
        for part, (f, _, h, w) in zip(tokens.split(hidden), state.shapes, strict=True):
            if pt is None:
                out = part.reshape(1, f, h // p, w // p, -1, p, p)
                out = out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
            else:
                out = part.reshape(1, (f + pt - 1) // pt, h // p, w // p, -1, pt, p, p)
                out = out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)
            outputs.append(out)
        return outputs


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' `apply_rotary_emb` (interleaved pairs) on (1, T, heads, d) with per-token (1, T, d) tables."""
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos.unsqueeze(2) + rotated.float() * sin.unsqueeze(2)).to(x.dtype)


# --- layer split: the output head the last stage runs (engine.layer_split) ----------------------------------------


def _layer_split_tail(model, hidden, call, extras, shape):
    emb = call_arg(call, 2, "temb")
    batch, frames, _, height, width = shape
    hidden = model.norm_final(hidden)
    hidden = model.norm_out(hidden, temb=emb)
    hidden = model.proj_out(hidden)
    p, p_t = model.config.patch_size, model.config.patch_size_t
    if p_t is None:
        out = hidden.reshape(batch, frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
    out = hidden.reshape(batch, (frames + p_t - 1) // p_t, height // p, width // p, -1, p_t, p, p)
    return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)


# --- tiny random-weight pipeline (engine.tiny) --------------------------------------------------------------------


def _tiny_pipeline(small: bool = False):
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    tokenizer = t5_tokenizer()
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
        text_encoder=t5_encoder(tokenizer, small),
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


# --- the reference pipeline's own arguments (engine.reference) ----------------------------------------------------


def _pipeline_kwargs(kwargs: dict[str, Any], options: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
    """CogVideoXPipeline's own arguments: dynamic CFG when the registry entry asks for it."""
    if "use_dynamic_cfg" in options:
        kwargs["use_dynamic_cfg"] = options["use_dynamic_cfg"]
    return kwargs


FAMILY = FamilyParts(
    adapter=CogVideoXAdapter,
    layout=Layout(
        ("transformer_blocks",),
        ("norm_final", "norm_out", "proj_out"),
        _layer_split_tail,
        packed=CogVideoXPackedForward,
    ),
    tiny={"cogvideox": _tiny_pipeline},
    bench_shapes=((9, 17), ((32, 32), (32, 48))),
    mixed_bench_shapes=((9, 17, 25), ((32, 32), (32, 48), (48, 32), (48, 48))),
    pipeline_kwargs=_pipeline_kwargs,
)
