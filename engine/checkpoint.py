"""A running request's denoising state, taken between two steps, so that another engine can finish it bit-exactly.

`snapshot` copies a Sequence's state to CPU (latents, generator, scheduler, family extras, approximate cache,
counters); `restore` puts it back into a freshly started Sequence of the identical request. `to_bytes` and
`from_bytes` serialise it with torch's weights-only format (tensors and plain values; no code is unpickled).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.request import CheckpointMismatch, GenerationRequest

if TYPE_CHECKING:
    from engine.families.base import FamilyAdapter
    from engine.registry import ModelSpec
    from engine.sequence import Sequence

FORMAT = 1
# Scheduler attributes that are configuration, rebuilt by `set_timesteps` from the model's own scheduler.
_SCHEDULER_CONFIG = ("_internal_dict",)
_PLAIN = (int, float, bool, str, type(None))


@dataclass
class Checkpoint:
    """One request's state after `step` of its `num_steps` denoising steps, on CPU."""

    fingerprint: str
    step: int
    num_steps: int
    latents: torch.Tensor
    generator: torch.Tensor  # torch.Generator.get_state()
    scheduler: dict[str, Any]  # the scheduler's attributes: sigmas, step index, multistep history ...
    extra: dict[str, Any]  # the family's per-step state (adapter.state_extra)
    cache: dict[str, Any] | None  # the approximate step cache's state (engine.step_cache.RequestCache.state)
    stats: dict[str, Any]  # counters so far, so the finished request's statistics cover every step
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(dataclasses.asdict(self), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Raises CheckpointMismatch for a file that is not a checkpoint of this format."""
        try:
            fields = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign bytes: pickle, zip and torch errors alike
            raise CheckpointMismatch(f"not a readable checkpoint: {exc}") from exc
        if not isinstance(fields, dict) or fields.get("format") != FORMAT:
            raise CheckpointMismatch(f"not a checkpoint of format {FORMAT}")
        return cls(**fields)


def fingerprint(spec: ModelSpec, request: GenerationRequest) -> str:
    """Everything that shapes a request's denoising: the model and every request field but its id."""
    fields = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("id", "context")}
    if request.context is not None:  # a continued video's latents count by value, not by their abbreviated repr
        fields["context"] = hashlib.sha256(request.context.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    model = {"name": spec.name, "path": spec.path, "dtype": spec.dtype, "options": spec.options}
    text = json.dumps({"model": model, "request": fields}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def snapshot(seq: Sequence, adapter: FamilyAdapter, fingerprint: str) -> Checkpoint:
    """The sequence's state now, between two steps, copied to CPU (the engine goes on changing the original)."""
    scheduler = {k: _to_cpu(v) for k, v in vars(seq.scheduler).items() if k not in _SCHEDULER_CONFIG}
    stats = seq.stats
    return Checkpoint(
        fingerprint=fingerprint,
        step=seq.step_index,
        num_steps=seq.num_steps,
        latents=_to_cpu(seq.latents),
        generator=seq.generator.get_state(),
        scheduler=scheduler,
        extra={name: _to_cpu(seq.extra.get(name)) for name in _extra_names(seq, adapter)},
        cache=None if seq.cache is None else _to_cpu(seq.cache.state(adapter.models())),
        stats={
            "steps_computed": stats.steps_computed,
            "steps_reused": stats.steps_reused,
            "block_evaluations": stats.block_evaluations,
            "batch_sizes": torch.tensor(stats.batch_sizes, dtype=torch.int32),
        },
    )


def restore(seq: Sequence, adapter: FamilyAdapter, checkpoint: Checkpoint) -> None:
    """Continue a freshly started sequence of the same request from the checkpoint's step."""
    if checkpoint.num_steps != seq.num_steps or not 0 < checkpoint.step < seq.num_steps:
        raise CheckpointMismatch(f"checkpoint at step {checkpoint.step}/{checkpoint.num_steps} does not fit")
    device = seq.latents.device
    fresh = vars(seq.scheduler)
    for name, value in checkpoint.scheduler.items():
        # Where the fresh scheduler keeps a tensor (FlowMatch keeps sigmas on CPU), the saved one goes there too.
        target = fresh[name].device if isinstance(fresh.get(name), torch.Tensor) else device
        fresh[name] = _to_device(value, target)
    seq.latents = checkpoint.latents.to(device=device, dtype=seq.latents.dtype)
    seq.generator.set_state(checkpoint.generator)  # the same object the family's step kwargs hold
    for name in _extra_names(seq, adapter):
        seq.extra[name] = _to_device(checkpoint.extra.get(name), device)
    if seq.cache is not None and checkpoint.cache is not None:
        seq.cache.restore(_to_device(checkpoint.cache, device), adapter.models())
    seq.step_index = checkpoint.step
    stats = checkpoint.stats
    seq.stats.steps_computed = int(stats["steps_computed"])
    seq.stats.steps_reused = int(stats["steps_reused"])
    seq.stats.block_evaluations = int(stats["block_evaluations"])
    seq.stats.batch_sizes = [int(n) for n in stats["batch_sizes"].tolist()]
    seq.stats.resumed_from_step = checkpoint.step


def _extra_names(seq: Sequence, adapter: FamilyAdapter) -> tuple[str, ...]:
    """The family's per-step state, and a long video's (engine.long_video: a continuation's finished chunks)."""
    from engine.long_video import STATE_EXTRA

    return (*adapter.state_extra, *(name for name in STATE_EXTRA if name in seq.extra))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, _PLAIN):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
