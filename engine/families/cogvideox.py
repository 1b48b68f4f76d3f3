"""CogVideoX (1.0 and 1.5) over diffusers' CogVideoXPipeline.

Stages follow `CogVideoXPipeline.__call__`: T5 embeddings padded to the transformer's text length, latents
laid out (B, F, C, H, W), rotary embeddings per shape, DDIM or DPM steps, optional dynamic CFG.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler

from engine.families.base import FamilyAdapter, ModelCall, TextEmbedding, stack_rows
from engine.request import GenerationRequest, InvalidRequest
from engine.sequence import Sequence


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
        latents = latents[:, seqs[0].extra["additional_frames"] :]
        latents = latents.permute(0, 2, 1, 3, 4)
        latents = 1 / self.pipe.vae_scaling_factor_image * latents
        return self.to_frames(self.vae.decode(latents).sample)
