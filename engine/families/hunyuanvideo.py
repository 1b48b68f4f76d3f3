"""HunyuanVideo over diffusers' HunyuanVideoPipeline: embedded guidance, no unconditional row.

Stages follow `HunyuanVideoPipeline.__call__`: Llama hidden states under a prompt template (cropped),
a CLIP pooled vector, linear sigmas, and the guidance scale fed to the transformer as a per-sample input.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE, retrieve_timesteps

from engine.families.base import FamilyAdapter, ModelCall, TextEmbedding, stack_rows
from engine.request import GenerationRequest
from engine.sequence import Sequence

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
        return self.to_frames(self.vae.decode(latents, return_dict=False)[0])
