"""What goes into the engine and what comes out: the seam between worker and engine.

Plain dataclasses and named errors, importable without torch so the API can validate with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "engine_error"


class InvalidRequest(EngineError):
    """A request the model cannot serve; raised before any compute.

    `field` names the offending request field and `rule` says what it must satisfy.
    """

    code = "invalid_request"

    def __init__(self, field: str, rule: str, message: str | None = None) -> None:
        self.field = field
        self.rule = rule
        super().__init__(message or f"{field}: {rule}")


class ModelUnavailable(EngineError):
    """The model is not in the registry or could not be loaded."""

    code = "model_unavailable"


class RequestCanceled(EngineError):
    """The request was canceled before it finished."""

    code = "canceled"


class CheckpointMismatch(EngineError):
    """A checkpoint taken for another request, model or format than the one it was offered to."""

    code = "checkpoint_mismatch"


WINDOWS, CONTINUATION = "windows", "continuation"
LONG_VIDEO_METHODS = (WINDOWS, CONTINUATION)


@dataclass(frozen=True)
class LongVideo:
    """How a video longer than the model's native window is made from native-length pieces (engine.long_video).

    `windows`: every step the full latent is cut into overlapping native windows (offsets moving from step to
    step), their outputs fused, and the request's scheduler steps once. `continuation`: native chunks one after
    another, each starting from the previous chunk's clean tail latents. Frame counts are pixel frames, multiples
    of the family's frame multiple; `color_match` (continuation) pulls each chunk's latent colour statistics
    towards the first chunk's, 0 (off) to 1. Validated by `engine.long_video_settings.parse_long_video`.
    """

    method: str = WINDOWS
    overlap: int = 8  # windows: frames shared by neighbouring windows
    context_frames: int = 8  # continuation: frames of the previous chunk's tail each chunk starts from
    color_match: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The resolved settings, as a request's `long_video` (recorded in the job's params)."""
        return {
            "method": self.method,
            "overlap": self.overlap,
            "context_frames": self.context_frames,
            "color_match": self.color_match,
        }


# Receives a finished request's frames in order, a few at a time (uint8 (n, H, W, 3) or float32 per EngineConfig),
# on the engine's loop thread, as the VAE decodes them: it must return quickly (hand them to an encoder queue).
FramesCallback = Callable[[Any], None]


@dataclass(frozen=True)
class GenerationRequest:
    """One video to make. Every field is resolved (defaults applied) and validated."""

    id: str
    prompt: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str = ""
    fps: int = 8
    # Approximate step-caching policy: None (exact reuse only) or {"policy": ..., settings}; see cache_policy.
    cache: dict[str, Any] | None = None
    # Longer than the model's window (or asked for): how it is made; None for an ordinary request.
    long_video: LongVideo | None = None
    # Per-segment prompts, ((from_frame, prompt), ...) ascending: `prompt` holds before the first from_frame.
    segments: tuple[tuple[int, str], ...] = ()
    # Extend: the clean latents of a finished video (a CPU tensor, `GenerationResult.latents` of that job); the
    # new video continues from its tail and holds only the new frames. Compared by identity, fingerprinted by value.
    context: Any = field(default=None, compare=False)

    @property
    def is_long(self) -> bool:
        """Whether the engine makes this request from native pieces (engine.long_video)."""
        return self.long_video is not None or self.context is not None or bool(self.segments)


@dataclass
class RequestStats:
    """How a request was served.

    `steps_computed` counts denoising steps whose transformer ran in full, `steps_reused` those served from the
    request's approximate cache (`cache_policy`): a forecast output, or the first block only plus the cached
    residual of the others. `block_evaluations` counts transformer blocks run for this request's rows.
    """

    steps_computed: int = 0
    steps_reused: int = 0
    cache_policy: str = "none"
    block_evaluations: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    seconds_queued: float = 0.0
    seconds_running: float = 0.0
    resumed_from_step: int = 0  # the checkpoint's step when the request continued from one, else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps_computed": self.steps_computed,
            "steps_reused": self.steps_reused,
            "cache": {
                "policy": self.cache_policy,
                "steps_computed": self.steps_computed,
                "steps_from_cache": self.steps_reused,
                "block_evaluations": self.block_evaluations,
            },
            "batch_sizes": list(self.batch_sizes),
            "seconds_queued": round(self.seconds_queued, 4),
            "seconds_running": round(self.seconds_running, 4),
            "resumed_from_step": self.resumed_from_step,
        }


@dataclass
class GenerationResult:
    """The frames of one finished request: uint8 array shaped (frames, height, width, 3).

    `frames` is None when the request was submitted with `on_frames`: the callback received every frame, in
    order, before the future resolved. `latents` are the final clean latents on CPU (the family's layout), which a
    later request's `context` continues from (extend).
    """

    request_id: str
    frames: Any  # numpy.ndarray, uint8, (F, H, W, 3), or None when streamed
    fps: int
    stats: RequestStats
    latents: Any = None  # torch.Tensor on CPU
