"""One request's state inside the engine: its own generator, scheduler, latents and step counter.

Requests at different steps, with different step counts, advance together because each keeps all of
its denoising state here; the engine only ever batches the transformer call.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.request import FramesCallback, GenerationRequest, GenerationResult, RequestStats

ProgressCallback = Callable[[int, int], None]
CheckpointCallback = Callable[[Any], None]  # receives an engine.checkpoint.Checkpoint


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    future: Future[GenerationResult]
    on_progress: ProgressCallback | None = None
    # Every `checkpoint_every` steps the loop hands `on_checkpoint` a copy of the state; `resume_from` is the
    # engine.checkpoint.Checkpoint the request continues from (dropped once restored).
    checkpoint_every: int = 0
    on_checkpoint: CheckpointCallback | None = None
    resume_from: Any = None
    on_frames: FramesCallback | None = None  # streams the decoded frames (GenerationRequest's FramesCallback)
    status: Status = Status.WAITING
    canceled: bool = False
    generator: torch.Generator | None = None
    latents: torch.Tensor | None = None
    scheduler: Any = None
    timesteps: torch.Tensor | None = None
    step_index: int = 0
    cond: Any = None  # TextEmbedding of the prompt
    uncond: Any = None  # TextEmbedding of the negative prompt, when guidance runs an unconditional row
    # Family-specific state that is neither latents nor scheduler (e.g. CogVideoX's previous x0 estimate).
    extra: dict[str, Any] = field(default_factory=dict)
    cache: Any = None  # engine.step_cache.RequestCache: this request's approximate-cache state
    stats: RequestStats = field(default_factory=RequestStats)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    finished_at: int | None = None  # engine iteration of the last denoising step

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def timestep(self) -> torch.Tensor:
        return self.timesteps[self.step_index]

    @property
    def row_timestep(self) -> torch.Tensor:
        """The timestep the transformer embeds for this sequence's rows: its step's (a long video's chunk may give
        each latent frame its own, engine.long_video)."""
        return self.timestep

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    @property
    def rows(self) -> int:
        """Rows this sequence adds to a forward: conditional, plus unconditional under guidance."""
        return 1 if self.uncond is None else 2
