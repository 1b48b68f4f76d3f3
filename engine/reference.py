"""A request served the plain diffusers way: its family's own pipeline, one `__call__` per request.

The exactness tests compare the engine against this, and the benchmark times it as the baseline. Each family's
own `__call__` arguments come from its module (`FamilyParts.pipeline_kwargs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine import families
from engine.registry import ModelSpec
from engine.request import GenerationRequest


def load_pipeline(spec: ModelSpec) -> Any:
    """The registry entry's pipeline, loaded like the engine loads it (dtype, first device, no progress bars)."""
    return families.get(spec.family).adapter.load(spec).pipe


def pipeline_kwargs(spec: ModelSpec, request: GenerationRequest) -> dict[str, Any]:
    """The `__call__` arguments that make a pipeline serve `request` exactly as the engine does."""
    kwargs: dict[str, Any] = dict(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_frames=request.num_frames,
        height=request.height,
        width=request.width,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
    )
    if "max_sequence_length" in spec.options:
        kwargs["max_sequence_length"] = spec.options["max_sequence_length"]
    return families.get(spec.family).parts.pipeline_kwargs(kwargs, spec.options, request)


@torch.no_grad()
def run_pipeline(pipe: Any, spec: ModelSpec, request: GenerationRequest) -> np.ndarray:
    """Float frames in [0, 1], (F, H, W, 3), from one pipeline call."""
    return pipe(**pipeline_kwargs(spec, request)).frames[0]
