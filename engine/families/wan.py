"""Wan 2.1 and 2.2 (two experts: a high-noise and a low-noise transformer) over diffusers' WanPipeline.

Stages follow `WanPipeline.__call__`: T5 prompt embeddings cut to their true length and zero-padded,
float32 latents from the request's generator, flow-matching timesteps, CFG, then the VAE's un-normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from engine.families.base import FamilyAdapter, ModelCall, TextEmbedding, stack_rows, trim_padding
from engine.request import GenerationRequest
from engine.sequence import Sequence


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
            # The pipeline keeps the true tokens and zeroes the padding positions.
            padded = torch.cat([row[:n], row.new_zeros(length - int(n), row.size(1))])
            out.append(TextEmbedding(embeds=padded.unsqueeze(0).to(self.dtype)))
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
        vae = self.vae
        latents = latents.to(vae.device, dtype=vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.to_frames(video)
