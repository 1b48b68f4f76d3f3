"""Where a system's time goes: text encoding, transformer, scheduler, VAE decode, other; and transformer FLOPs.

Timers wrap each system's own stage entry points (instance attributes and forward hooks, removed on exit), so
neither system runs differently: the engine's `adapter.encode_prompts`, `runner.run_all`, `adapter.scheduler_step`
and `adapter.decode`; the pipeline's `encode_prompt`, its transformers' forwards, `scheduler.step`, and
`vae.decode` plus `video_processor.postprocess_video`. "Other" is the run's wall time minus the stages.
On CUDA each timer synchronises the device, so the stage boundaries are real (at a small cost).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

TEXT, TRANSFORMER, SCHEDULER, VAE, OTHER = "text encoding", "transformer", "scheduler", "VAE decode", "other"
STAGES = (TEXT, TRANSFORMER, SCHEDULER, VAE, OTHER)


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch's counter knows the CUDA attention kernels but not the CPU one, which would count as zero.
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


class StageClock:
    """Adds up the seconds spent inside each stage while installed (`with clock:`); optionally counts FLOPs.

    With `count_flops`, every transformer call runs under torch's FlopCounterMode (slow: use it in a run that
    is not timed); `flops` is then the total over the run.
    """

    def __init__(self, device: torch.device, count_flops: bool = False) -> None:
        self.device = device
        self.count_flops = count_flops
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops = 0
        self._installers: list[Callable[[], Callable[[], None]]] = []
        self._undo: list[Callable[[], None]] = []

    # --- what to time ------------------------------------------------------------------------------

    def method(self, owner: Any, name: str, stage: str) -> StageClock:
        """Time every call of `owner.name` (a bound method, replaced by an instance attribute while installed)."""

        def install() -> Callable[[], None]:
            had_own = name in vars(owner)
            original = getattr(owner, name)

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                with self._stage(stage):
                    return original(*args, **kwargs)

            setattr(owner, name, timed)
            return (lambda: setattr(owner, name, original)) if had_own else (lambda: delattr(owner, name))

        self._installers.append(install)
        return self

    def module(self, module: torch.nn.Module | None, stage: str) -> StageClock:
        """Time every forward of `module` (forward pre-hook and hook)."""
        if module is None:
            return self

        def install() -> Callable[[], None]:
            open_stages: list[Any] = []

            def enter(*_: Any) -> None:
                context = self._stage(stage)
                context.__enter__()
                open_stages.append(context)

            def leave(*_: Any) -> None:
                open_stages.pop().__exit__(None, None, None)

            handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
            return lambda: [h.remove() for h in handles]

        self._installers.append(install)
        return self

    # --- running -----------------------------------------------------------------------------------

    def __enter__(self) -> StageClock:
        self._undo = [install() for install in self._installers]
        self._started = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.total = self._now() - self._started
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def breakdown(self) -> dict[str, float]:
        """Seconds per stage, "other" being the rest of the run's wall time."""
        out = {stage: self.seconds.get(stage, 0.0) for stage in STAGES[:-1]}
        out[OTHER] = max(0.0, self.total - sum(out.values()))
        return out

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        counter = (
            FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
            if self.count_flops and stage == TRANSFORMER
            else None
        )
        start = self._now()
        try:
            if counter is None:
                yield
            else:
                with counter:
                    yield
                self.flops += counter.get_total_flops()
        finally:
            self.seconds[stage] += self._now() - start


def engine_clock(engine: Any, count_flops: bool = False) -> StageClock:
    """Timers around the engine's stages (its adapter's and runner's entry points)."""
    adapter = engine.adapter
    return (
        StageClock(adapter.device, count_flops)
        .method(adapter, "encode_prompts", TEXT)
        .method(engine.runner, "run_all", TRANSFORMER)
        .method(adapter, "scheduler_step", SCHEDULER)
        .method(adapter, "decode", VAE)
    )


def pipeline_clock(pipe: Any, count_flops: bool = False) -> StageClock:
    """Timers around a diffusers pipeline's components, as its `__call__` uses them."""
    clock = StageClock(pipe.transformer.device, count_flops).method(pipe, "encode_prompt", TEXT)
    for name in ("transformer", "transformer_2"):
        clock.module(getattr(pipe, name, None), TRANSFORMER)
    clock.method(pipe.scheduler, "step", SCHEDULER).method(pipe.vae, "decode", VAE)
    return clock.method(pipe.video_processor, "postprocess_video", VAE)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square matmuls of side n in `dtype`: the roofline the transformer is held to."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # first call: kernel choice, allocation
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
