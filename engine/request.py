"""What goes into the engine and what comes out: the seam between worker and engine.

Plain dataclasses and named errors, importable without torch so the API can validate with them.
"""

from __future__ import annotations

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
    # Per forward the request ran in, the forward's tokens (all its rows' video patches and text keys).
    forward_tokens: list[int] = field(default_factory=list)
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
            "forward_tokens": list(self.forward_tokens),
            "seconds_queued": round(self.seconds_queued, 4),
            "seconds_running": round(self.seconds_running, 4),
            "resumed_from_step": self.resumed_from_step,
        }


@dataclass
class GenerationResult:
    """The frames of one finished request: uint8 array shaped (frames, height, width, 3)."""

    request_id: str
    frames: Any  # numpy.ndarray, uint8, (F, H, W, 3)
    fps: int
    stats: RequestStats
