"""LTX-Video over diffusers' LTXPipeline.

Stages follow `LTXPipeline.__call__`: T5 embeddings with a mask, packed (B, tokens, C) latents, a sigma
shift from the video's token count, rope scaled by the frame rate, and a timestep-conditioned VAE decode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, rescale_noise_cfg, retrieve_timesteps

from engine.attention import cross_attention, self_attention
from engine.families.base import FamilyAdapter, FamilyParts, ModelCall, TextEmbedding, stack_rows
from engine.layer_split.layout import Layout
from engine.packing import PackedForward, PackedRow, PackedState, Segments, block_kv, text_keys
from engine.request import GenerationRequest
from engine.sequence import Sequence
from engine.tiny import t5_encoder, t5_tokenizer
from engine.vae import fast_decode, fast_pieces, temporal_tile_pieces


class LTXAdapter(FamilyAdapter):
    family = "ltx"
    pipeline_class = "LTXPipeline"
    default_max_sequence_length = 128
    # LTX's rotary table has one entry per row.
    block_row_args = (*FamilyAdapter.block_row_args, "image_rotary_emb")

    def __init__(self, pipe, options=None) -> None:
        super().__init__(pipe, options)
        self.spatial_multiple = pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size
        self.temporal_factor = pipe.vae_temporal_compression_ratio
        self.text_dtype = pipe.text_encoder.dtype
        self.guidance_rescale = float(self.options.get("guidance_rescale", 0.0))
        self.decode_timestep = float(self.options.get("decode_timestep", 0.0))
        noise_scale = self.options.get("decode_noise_scale")
        self.decode_noise_scale = self.decode_timestep if noise_scale is None else float(noise_scale)
        self._packed = LTXPackedForward(self.transformer)

    def packed_forward(self, model: torch.nn.Module) -> PackedForward | None:
        return self._packed if model is self.transformer else None

    def row_positions(self, seq: Sequence) -> tuple:
        """The latent grid and the rope's interpolation scale (frame rate dependent): packed latents hide both."""
        pipe = self.pipe
        ratio = pipe.vae_spatial_compression_ratio
        scale = (pipe.vae_temporal_compression_ratio / seq.request.fps, ratio, ratio)
        return (*self.latent_dims(seq.request), scale)

    def text_kv_parts(self, model: torch.nn.Module) -> tuple[torch.nn.Module, list] | None:
        return model.caption_projection, [block.attn2 for block in model.transformer_blocks]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[TextEmbedding]:
        pipe = self.pipe
        inputs = self.tokenize(prompts)
        # LTX encodes without the mask and hands the mask to the transformer instead.
        hidden = pipe.text_encoder(inputs.input_ids.to(pipe.text_encoder.device))[0]
        hidden = hidden.to(dtype=self.text_dtype, device=self.device)
        mask = inputs.attention_mask.bool().to(self.device)
        return [TextEmbedding(embeds=h.unsqueeze(0), mask=m.unsqueeze(0)) for h, m in zip(hidden, mask, strict=True)]

    def latent_dims(self, request: GenerationRequest) -> tuple[int, int, int]:
        pipe = self.pipe
        return (
            (request.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1,
            request.height // pipe.vae_spatial_compression_ratio,
            request.width // pipe.vae_spatial_compression_ratio,
        )

    def prepare_latents(self, request: GenerationRequest, generator: torch.Generator) -> torch.Tensor:
        shape = (1, self.transformer.config.in_channels, *self.latent_dims(request))
        latents = self.randn(shape, generator)
        return self.pipe._pack_latents(
            latents, self.pipe.transformer_spatial_patch_size, self.pipe.transformer_temporal_patch_size
        )

    def set_timesteps(self, seq: Sequence) -> None:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        steps = seq.request.num_inference_steps
        f, h, w = self.latent_dims(seq.request)
        config = scheduler.config
        mu = calculate_shift(
            f * h * w,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, None, sigmas=sigmas, mu=mu)
        seq.scheduler, seq.timesteps = scheduler, timesteps

    def group_key(self, seq: Sequence) -> tuple:
        # Packed latents hide the (frames, height, width) split, and rope depends on the frame rate.
        return (self.latent_dims(seq.request), seq.request.fps, seq.cond.length)

    def decode_key(self, seq: Sequence) -> tuple:
        return self.latent_dims(seq.request)

    def tokens_per_row(self, seq: Sequence) -> int:
        return seq.latents.shape[1] + self._packed.text_keys(seq.cond)

    def model_call(self, seqs: list[Sequence]) -> ModelCall:
        pipe = self.pipe
        guided = [s for s in seqs if s.uncond is not None]
        rows = seqs + guided
        texts = [s.cond for s in seqs] + [s.uncond for s in guided]
        f, h, w = self.latent_dims(seqs[0].request)
        ratio = pipe.vae_spatial_compression_ratio
        kwargs = dict(
            hidden_states=stack_rows([s.latents for s in rows]).to(self.text_dtype),
            encoder_hidden_states=stack_rows([t.embeds for t in texts]),
            timestep=torch.stack([s.timestep for s in rows]),
            encoder_attention_mask=stack_rows([t.mask for t in texts]),
            num_frames=f,
            height=h,
            width=w,
            rope_interpolation_scale=(pipe.vae_temporal_compression_ratio / seqs[0].request.fps, ratio, ratio),
            attention_kwargs=None,
        )
        return ModelCall(model=self.transformer, kwargs=kwargs, rows=len(rows))

    def guide(self, seq: Sequence, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
        cond = cond.float()
        if uncond is None:
            return cond
        guided = uncond.float() + seq.request.guidance_scale * (cond - uncond.float())
        if self.guidance_rescale > 0:
            guided = rescale_noise_cfg(guided, cond, guidance_rescale=self.guidance_rescale)
        return guided

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seqs: list[Sequence]) -> list[np.ndarray]:
        latents, timestep = self._vae_input(latents, seqs)
        with fast_decode(self.vae):  # heavy batch-1 3-D convolutions on oneDNN (engine/vae.py)
            video = self.vae.decode(latents, timestep, return_dict=False)[0]
        return self.to_frames(video)

    def _vae_input(self, latents: torch.Tensor, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Packed latents -> the VAE's (B, C, F, H, W), un-normalised and, for a timestep-conditioned VAE, noised to
        the decode timestep (which the VAE also takes), as the pipeline decodes."""
        pipe, vae = self.pipe, self.vae
        f, h, w = self.latent_dims(seqs[0].request)
        latents = pipe._unpack_latents(
            latents, f, h, w, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        )
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        latents = latents.to(self.text_dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            # Each video's decode noise comes from its own generator, as in a one-request pipeline call.
            noise = torch.cat([self.randn((1, *latents.shape[1:]), s.generator, latents.dtype) for s in seqs])
            n = len(seqs)
            timestep = torch.tensor([self.decode_timestep] * n, device=latents.device, dtype=latents.dtype)
            scale = torch.tensor([self.decode_noise_scale] * n, device=latents.device, dtype=latents.dtype)
            scale = scale[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        return latents.to(vae.dtype), timestep

    def decode_stream(self, latents: torch.Tensor, seq: Sequence, long: bool) -> Iterator[np.ndarray]:
        """Beyond the native window (or with the VAE's framewise decoding on), temporal tiles of 16 frames, stride 8,
        blended over their overlap as the VAE's framewise decoding does: close to, not equal to, the whole decode
        (the tiles do not see each other). Within the window, the whole decode in one piece, as `decode`."""
        vae = self.vae
        tile = vae.tile_sample_min_num_frames // vae.temporal_compression_ratio
        if not ((long or vae.use_framewise_decoding) and self.latent_dims(seq.request)[0] > tile):
            yield from self.decode(latents, [seq])
            return
        with torch.no_grad():
            z, timestep = self._vae_input(latents, [seq])
        for piece in fast_pieces(vae, temporal_tile_pieces(vae, z, timestep)):
            yield self.to_frames(piece)[0]


class LTXPackedForward:
    """LTXVideoTransformer3DModel's forward over packed rows, on the model's own modules and weights.

    Follows `LTXVideoTransformer3DModel.forward` and `LTXVideoTransformerBlock.forward`; a row's timestep
    modulation is repeated over its own tokens, its rotary table comes from its own grid and frame rate, and
    attention stays within the row (engine.attention).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.num_blocks = len(model.transformer_blocks)
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def text_keys(text: TextEmbedding) -> int:
        """Keys a prompt needs: its true tokens. The model masks padding with a -10000 logit bias, whose softmax
        weight is exactly 0 in float32, so dropping those keys changes nothing (all-padding keeps them all)."""
        true = int(text.mask.sum())
        return true if true > 0 else text.length

    @torch.no_grad()
    def text_kv(self, text: TextEmbedding) -> dict[str, Any]:
        """The projected text of the prompt's true tokens (`engine.packing.text_keys`); no bias."""
        return text_keys(self.model.caption_projection(text.embeds[:, : self.text_keys(text)]))

    def tokens(self, latent_shape: tuple[int, ...], text: TextEmbedding) -> int:
        return latent_shape[-2] + self.text_keys(text)

    def _rotary(self, positions: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if positions not in self._rope:
            f, h, w, scale = positions
            self._rope[positions] = self.model.rope(torch.empty((1, 0), device=device), f, h, w, scale)
        return self._rope[positions]

    @torch.no_grad()
    def embed(self, rows: list[PackedRow]) -> PackedState:
        model = self.model
        parts = [row.latents.reshape(1, *row.latents.shape[-2:]) for row in rows]
        tokens = Segments(tuple(p.shape[1] for p in parts))
        latents = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        hidden = model.proj_in(latents.to(model.proj_in.weight.dtype))
        timestep = torch.stack([row.timestep.reshape(()) for row in rows])
        temb, embedded_timestep = model.time_embed(timestep, batch_size=len(rows), hidden_dtype=hidden.dtype)
        rotary = [self._rotary(row.positions, hidden.device) for row in rows]
        text_kv = [row.text_kv if row.text_kv is not None else self.text_kv(row.text) for row in rows]
        return PackedState(
            hidden=hidden,
            tokens=tokens,
            shapes=[tuple(p.shape[1:]) for p in parts],
            per_token={
                "rope_cos": torch.cat([cos for cos, _ in rotary], dim=1),
                "rope_sin": torch.cat([sin for _, sin in rotary], dim=1),
            },
            per_row={"temb": list(temb), "embedded_timestep": list(embedded_timestep), "text_kv": text_kv},
        )

    @torch.no_grad()
    def block(self, index: int, state: PackedState) -> PackedState:
        block = self.model.transformer_blocks[index]
        tokens, hidden = state.tokens, state.hidden
        temb = torch.stack(state.per_row["temb"])
        ada = block.scale_shift_table[None].to(temb.device) + temb.reshape(
            len(tokens), block.scale_shift_table.shape[0], -1
        )

        def per_token(i: int) -> torch.Tensor:  # shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
            return tokens.expand(ada[:, i])

        norm = block.norm1(hidden) * (1 + per_token(1)) + per_token(0)
        hidden = hidden + self._self_attention(block.attn1, norm, state) * per_token(2)
        hidden = hidden + self._cross_attention(block.attn2, hidden, state, index)
        norm = block.norm2(hidden) * (1 + per_token(4)) + per_token(3)
        hidden = hidden + block.ff(norm) * per_token(5)
        return PackedState(hidden, tokens, state.shapes, state.per_token, state.per_row)

    def _self_attention(self, attn: Any, x: torch.Tensor, state: PackedState) -> torch.Tensor:
        rotary = (state.per_token["rope_cos"], state.per_token["rope_sin"])
        query = apply_rotary_emb(attn.norm_q(attn.to_q(x)), rotary).unflatten(2, (attn.heads, -1))
        key = apply_rotary_emb(attn.norm_k(attn.to_k(x)), rotary).unflatten(2, (attn.heads, -1))
        value = attn.to_v(x).unflatten(2, (attn.heads, -1))
        out = self_attention(query, key, value, state.tokens).flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))

    def _cross_attention(self, attn: Any, x: torch.Tensor, state: PackedState, index: int) -> torch.Tensor:
        query = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1))
        entries = state.per_row["text_kv"]
        kv = [block_kv(entry, index, attn) for entry in entries]
        keys, values = [k for k, _ in kv], [v for _, v in kv]
        out = cross_attention(query, state.tokens, keys, values).flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))

    @torch.no_grad()
    def head(self, state: PackedState) -> list[torch.Tensor]:
        model, tokens = self.model, state.tokens
        embedded = torch.stack(state.per_row["embedded_timestep"])  # (R, D)
        shift_scale = model.scale_shift_table[None] + embedded[:, None]  # (R, 2, D)
        hidden = model.norm_out(state.hidden)
        hidden = hidden * (1 + tokens.expand(shift_scale[:, 1])) + tokens.expand(shift_scale[:, 0])
        return tokens.split(model.proj_out(hidden))


# --- layer split: the output head the last stage runs (engine.layer_split) ----------------------------------------


def _layer_split_tail(model, hidden, call, extras, shape):
    embedded_timestep = extras[0]
    embedded_timestep = embedded_timestep.view(shape[0], -1, embedded_timestep.size(-1))
    values = model.scale_shift_table[None, None] + embedded_timestep[:, :, None]
    shift, scale = values[:, :, 0], values[:, :, 1]
    hidden = model.norm_out(hidden)
    hidden = hidden * (1 + scale) + shift
    return model.proj_out(hidden)


# --- tiny random-weight pipeline (engine.tiny) --------------------------------------------------------------------


def _tiny_pipeline(small: bool = False):
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = t5_tokenizer()
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
        text_encoder=t5_encoder(tokenizer, small),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )


# --- the reference pipeline's own arguments (engine.reference) ----------------------------------------------------


def _pipeline_kwargs(kwargs: dict[str, Any], options: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
    """LTXPipeline's own arguments: the request's frame rate, and the registry entry's guidance and decode options."""
    kwargs["frame_rate"] = request.fps
    for name in ("guidance_rescale", "decode_timestep", "decode_noise_scale"):
        if name in options:
            kwargs[name] = options[name]
    return kwargs


FAMILY = FamilyParts(
    adapter=LTXAdapter,
    layout=Layout(
        ("transformer_blocks",),
        ("norm_out", "proj_out", "scale_shift_table"),
        _layer_split_tail,
        (("time_embed", 1),),
        packed=LTXPackedForward,
    ),
    tiny={"ltx": _tiny_pipeline},
    bench_shapes=((9, 17), ((32, 32), (32, 64))),
    mixed_bench_shapes=((9, 17, 25), ((32, 32), (32, 64), (64, 32), (64, 64))),
    pipeline_kwargs=_pipeline_kwargs,
)
