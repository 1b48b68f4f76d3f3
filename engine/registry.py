"""The model registry: public model names mapped to a family, weights, device, limits and defaults.

Read from a TOML file (see `models.toml` beside this module) without importing torch, so the API can list
models and validate requests. `ModelSpec.resolve` turns a request's parameters into a `GenerationRequest`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import families
from engine.cache_policy import check_model_defaults, parse_cache
from engine.families import FamilyRules
from engine.long_video_settings import default_long_video, parse_long_video, parse_segments
from engine.request import GenerationRequest, InvalidRequest, LongVideo, ModelUnavailable

DEFAULT_REGISTRY_FILE = Path(__file__).with_name("models.toml")


@dataclass(frozen=True)
class ModelLimits:
    max_frames: int = 49  # the native window: frames of one transformer forward
    # Longest request, made from native windows or chunks (engine.long_video); None: the native window.
    max_long_frames: int | None = None
    max_height: int = 480
    max_width: int = 848
    max_steps: int = 100
    max_prompt_chars: int = 2000
    max_guidance_scale: float = 20.0


@dataclass(frozen=True)
class ModelDefaults:
    num_frames: int = 9
    height: int = 32
    width: int = 32
    num_inference_steps: int = 4
    guidance_scale: float = 5.0
    fps: int = 8


@dataclass(frozen=True)
class BatchLimits:
    """The engine's batching and memory knobs (see `engine.engine.EngineConfig`)."""

    max_rows: int = 16  # rows (requests x CFG branches) in one transformer forward
    max_tokens: int = 65536  # rows x (video patches + text tokens) in one forward
    max_running: int | None = None  # requests holding latents at once; None: 2 x max_rows
    max_decode_batch: int = 4  # finished videos of one shape in one VAE call
    decode_wait_steps: int = 4  # iterations a finished video may wait for same-shape peers to decode with
    vae_tiling: bool = False  # tiled / framewise VAE decoding (long or large videos; changes numerics slightly)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    path: str  # local pipeline directory or hub id
    dtype: str = "float32"
    devices: tuple[str, ...] = ("cpu",)
    # Stages the transformer's blocks are split over (engine.layer_split); more than one device also splits.
    layer_split: int = 1
    limits: ModelLimits = field(default_factory=ModelLimits)
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    batch: BatchLimits = field(default_factory=BatchLimits)
    size_multiple: int | None = None  # overrides the family's spatial multiple
    # Family-specific keyword arguments for the adapter (e.g. HunyuanVideo's prompt template).
    options: dict[str, Any] = field(default_factory=dict)
    # The registry entry's [long_video] table over the family's default (engine.long_video_settings).
    long_video_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def stages(self) -> int:
        """Layer-split stages: `layer_split`, or one per listed device when several are listed."""
        return max(self.layer_split, len(self.devices))

    @property
    def rules(self) -> FamilyRules:
        base = families.get(self.family).rules
        return replace(base, size_multiple=self.size_multiple) if self.size_multiple else base

    @property
    def window_frames(self) -> int:
        """The native window: the most frames one transformer forward makes."""
        return self.limits.max_frames

    @property
    def max_long_frames(self) -> int:
        """The longest request this model serves (long videos made from native windows or chunks)."""
        return max(self.limits.max_long_frames or self.limits.max_frames, self.limits.max_frames)

    @property
    def long_video(self) -> LongVideo:
        """The settings a long request gets when it names none, or leaves some out."""
        return default_long_video(self.family, self.window_frames, self.rules.frame_multiple, self.long_video_overrides)

    def public_dict(self) -> dict[str, Any]:
        """What `GET /v1/models` shows."""
        rules = self.rules
        return {
            "name": self.name,
            "family": self.family,
            "limits": {
                **self.limits.__dict__,
                "max_long_frames": self.max_long_frames,
                "window_frames": self.window_frames,
                "frame_rule": f"{rules.frame_multiple}k+1",
                "size_multiple": rules.size_multiple,
            },
            "defaults": dict(self.defaults.__dict__),
            "long_video": self.long_video.as_dict(),
        }

    def resolve(self, request_id: str, params: dict[str, Any], context: Any = None) -> GenerationRequest:
        """Apply defaults and check every limit; raises `InvalidRequest` naming the field.

        `context` (extend): the clean latents of the finished video to continue (`GenerationResult.latents`).
        """
        d, lim, rules = self.defaults, self.limits, self.rules
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("prompt", "must be a non-empty string")
        negative = params.get("negative_prompt") or ""
        for name, text in (("prompt", prompt), ("negative_prompt", negative)):
            if not isinstance(text, str):
                raise InvalidRequest(name, "must be a string")
            if len(text) > lim.max_prompt_chars:
                raise InvalidRequest(name, f"must be at most {lim.max_prompt_chars} characters")
        num_frames = _int(params, "num_frames", d.num_frames, 1, self.max_long_frames)
        rules.check_frames(num_frames)
        height = _int(params, "height", d.height, 1, lim.max_height)
        width = _int(params, "width", d.width, 1, lim.max_width)
        rules.check_size("height", height)
        rules.check_size("width", width)
        steps = _int(params, "num_inference_steps", d.num_inference_steps, 1, lim.max_steps)
        guidance = _float(params, "guidance_scale", d.guidance_scale, 0.0, lim.max_guidance_scale)
        seed = _int(params, "seed", 0, 0, 2**63 - 1)
        fps = _int(params, "fps", d.fps, 1, 60)
        # Recorded resolved (defaults applied), so a job's params say exactly which policy and strength ran.
        cache = None
        if params.get("cache") is not None:
            cache = parse_cache(params["cache"], self.options.get("cache_defaults")).as_dict()
        segments = parse_segments(params.get("segments"), num_frames, lim.max_prompt_chars)
        long_video = self._long_video(num_frames, params.get("long_video"), segments, context)
        return GenerationRequest(
            id=request_id,
            prompt=prompt,
            negative_prompt=negative,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            seed=seed,
            fps=fps,
            cache=cache,
            long_video=long_video,
            segments=segments,
            context=context,
        )

    def _long_video(self, num_frames: int, value: Any, segments: tuple, context: Any) -> LongVideo | None:
        """Resolved settings when the request is long (or asks for them), so the job records what ran."""
        if value is None and num_frames <= self.window_frames and not segments and context is None:
            return None
        settings = parse_long_video(value or {}, self.long_video, self.window_frames, self.rules.frame_multiple)
        if context is not None and settings.method != "continuation":
            if value is not None and "method" in value:
                raise InvalidRequest("long_video.method", "must be continuation to continue a finished video")
            settings = replace(settings, method="continuation")
        return settings

    def check_request(self, request: GenerationRequest) -> None:
        """Check an already-built request against this model's limits and family rules (the engine's guard)."""
        lim, rules = self.limits, self.rules
        checks = (
            ("num_frames", request.num_frames, self.max_long_frames),
            ("height", request.height, lim.max_height),
            ("width", request.width, lim.max_width),
            ("num_inference_steps", request.num_inference_steps, lim.max_steps),
        )
        for name, value, hi in checks:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise InvalidRequest(name, f"must be an integer between 1 and {hi}")
        rules.check_frames(request.num_frames)
        rules.check_size("height", request.height)
        rules.check_size("width", request.width)
        if not 0.0 <= request.guidance_scale <= lim.max_guidance_scale:
            raise InvalidRequest("guidance_scale", f"must be between 0.0 and {lim.max_guidance_scale}")
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise InvalidRequest("prompt", "must be a non-empty string")
        parse_cache(request.cache)
        if request.long_video is not None:
            parse_long_video(request.long_video, self.long_video, self.window_frames, rules.frame_multiple)
        parse_segments(request.segments or None, request.num_frames, lim.max_prompt_chars)
        if request.num_frames > self.window_frames and request.long_video is None:
            raise InvalidRequest("num_frames", f"must be at most {self.window_frames} unless long_video is set")
        if request.context is not None and (request.long_video is None or request.long_video.method != "continuation"):
            raise InvalidRequest("long_video.method", "must be continuation to continue a finished video")


def _int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, "must be an integer")
    if not lo <= value <= hi:
        raise InvalidRequest(name, f"must be between {lo} and {hi}")
    return value


def _float(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(name, "must be a number")
    if not lo <= float(value) <= hi:
        raise InvalidRequest(name, f"must be between {lo} and {hi}")
    return float(value)


class ModelRegistry:
    """All registered models, by public name."""

    def __init__(self, specs: dict[str, ModelSpec], default: str | None = None) -> None:
        if default is not None and default not in specs:
            raise ValueError(f"default_model {default!r} is not a registered model")
        self._specs = specs
        self._default = default

    @property
    def default(self) -> str | None:
        """The model a request that names none gets: the file's `default_model`, else the first registered."""
        return self._default or next(iter(self._specs), None)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ModelUnavailable(f"unknown model {name!r}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None, model_dir: str | None = None) -> ModelRegistry:
        """Load a registry TOML file. Relative `path`s resolve against `model_dir`."""
        path = Path(path or os.environ.get("VIDSERVE_MODELS_FILE") or DEFAULT_REGISTRY_FILE)
        model_dir = model_dir or os.environ.get("VIDSERVE_MODEL_DIR") or "var/models"
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        specs = {}
        for name, entry in data.get("models", {}).items():
            entry = dict(entry)
            weights = entry.pop("path")
            if weights.startswith("package:"):
                weights = str(Path(__file__).parent / weights.removeprefix("package:"))
            elif weights.startswith("hub:"):
                weights = weights.removeprefix("hub:")
            elif not os.path.isabs(weights):
                weights = str(Path(model_dir) / weights)
            specs[name] = ModelSpec(
                name=name,
                family=entry.pop("family"),
                path=weights,
                dtype=entry.pop("dtype", "float32"),
                devices=tuple(entry.pop("devices", ["cpu"])),
                layer_split=int(entry.pop("layer_split", 1)),
                limits=ModelLimits(**entry.pop("limits", {})),
                defaults=ModelDefaults(**entry.pop("defaults", {})),
                batch=BatchLimits(**entry.pop("batch", {})),
                size_multiple=entry.pop("size_multiple", None),
                options=entry.pop("options", {}),
                long_video_overrides=entry.pop("long_video", {}),
            )
            specs[name].long_video.as_dict()  # an invalid [long_video] table fails at load, not at the first request
            families.get(specs[name].family)  # an unknown family fails at load, naming the known ones
            if "cache_defaults" in specs[name].options:
                check_model_defaults(specs[name].options["cache_defaults"])
            if entry:
                raise ValueError(f"model {name!r}: unknown registry keys {sorted(entry)}")
        return cls(specs, data.get("default_model"))
