"""A request served the plain diffusers way: its family's own pipeline, one `__call__` per request.

The exactness tests compare the engine against this, and the benchmark times it as the baseline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.registry import ModelSpec
from engine.request import GenerationRequest


def load_pipeline(spec: ModelSpec) -> Any:
    """The registry entry's pipeline, loaded like the engine loads it (dtype, first device, no progress bars)."""
    from engine.families import adapter_class

    return adapter_class(spec.family).load(spec).pipe


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
    options = spec.options
    if "max_sequence_length" in options:
        kwargs["max_sequence_length"] = options["max_sequence_length"]
    if spec.family == "hunyuanvideo":
        if float(options.get("true_cfg_scale", 1.0)) > 1.0:
            kwargs["true_cfg_scale"] = options["true_cfg_scale"]
        else:
            kwargs.pop("negative_prompt")  # embedded guidance: no negative branch unless true CFG is asked for
        if "prompt_template" in options:
            kwargs["prompt_template"] = options["prompt_template"]
    elif spec.family == "ltx":
        kwargs["frame_rate"] = request.fps
        for name in ("guidance_rescale", "decode_timestep", "decode_noise_scale"):
            if name in options:
                kwargs[name] = options[name]
    elif spec.family == "cogvideox" and "use_dynamic_cfg" in options:
        kwargs["use_dynamic_cfg"] = options["use_dynamic_cfg"]
    return kwargs


@torch.no_grad()
def run_pipeline(pipe: Any, spec: ModelSpec, request: GenerationRequest) -> np.ndarray:
    """Float frames in [0, 1], (F, H, W, 3), from one pipeline call."""
    return pipe(**pipeline_kwargs(spec, request)).frames[0]
