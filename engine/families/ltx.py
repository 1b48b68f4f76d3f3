"""LTX-Video over diffusers' LTXPipeline.

Stages follow `LTXPipeline.__call__`: T5 embeddings with a mask, packed (B, tokens, C) latents, a sigma
shift from the video's token count, rope scaled by the frame rate, and a timestep-conditioned VAE decode.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, rescale_noise_cfg, retrieve_timesteps

from engine.families.base import FamilyAdapter, ModelCall, TextEmbedding, stack_rows
from engine.request import GenerationRequest
from engine.sequence import Sequence
from engine.vae import fast_decode


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
        return seq.latents.shape[1] + seq.cond.length

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
        with fast_decode(vae):  # heavy batch-1 3-D convolutions on oneDNN (engine/vae.py)
            video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        return self.to_frames(video)
