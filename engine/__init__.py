"""vidserve's generation engine: heterogeneous step-level batching over diffusers video models.

`Engine` (torch) is imported lazily so that `engine.registry`, `engine.families` (the family registry) and
`engine.request` stay usable by the API process, which never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.registry import ModelRegistry, ModelSpec
from engine.request import (
    CheckpointMismatch,
    EngineError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    ModelUnavailable,
    RequestCanceled,
    RequestStats,
)

if TYPE_CHECKING:
    from engine.engine import Engine

__all__ = [
    "CheckpointMismatch",
    "Engine",
    "EngineError",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequest",
    "ModelRegistry",
    "ModelSpec",
    "ModelUnavailable",
    "RequestCanceled",
    "RequestStats",
]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from engine.engine import Engine

        return Engine
    raise AttributeError(name)
