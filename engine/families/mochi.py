"""Mochi 1 over diffusers' MochiPipeline.

Stages follow `MochiPipeline.__call__`: masked T5 embeddings (all-zero for an empty prompt when the
pipeline says so), a linear-quadratic sigma schedule, CFG in float32, and the VAE's latent statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule, retrieve_timesteps

from engine.families.base import FamilyAdapter, ModelCall, TextEmbedding, pad_positions, stack_rows, trim_padding
from engine.request import GenerationRequest, InvalidRequest
from engine.sequence import Sequence
from engine.vae import fast_decode

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
        config = self.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            c = config.latent_channels
            mean = torch.tensor(config.latents_mean).view(1, c, 1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(config.latents_std).view(1, c, 1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        with fast_decode(self.vae):  # heavy batch-1 3-D convolutions on oneDNN (engine/vae.py)
            return self.to_frames(self.vae.decode(latents, return_dict=False)[0])
