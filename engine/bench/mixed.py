"""The mixed-shape mix (issue 12): the engine against two diffusers baselines, and where each system's time goes.

Baselines, on the same loaded components, seeds and parameters: diffusers one pipeline call per request, first
come first served; and diffusers batched: one pipeline call serves, together, every waiting request that shares
what one call needs (frames, size, steps, guidance; prompts, negative prompts and generators go in as lists),
oldest request first. Every timed run records its stage breakdown (engine.bench.stages); one further, untimed
run per system counts the transformer's FLOPs, from which its achieved FLOP/s in the timed run follows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.bench.run import (
    Measurement,
    PeakRSS,
    _sync,
    arrival_times,
    in_worker_thread,
    run_diffusers,
    run_engine,
)
from engine.bench.stages import STAGES, TRANSFORMER, engine_clock, pipeline_clock
from engine.engine import Engine
from engine.families.base import FamilyAdapter
from engine.reference import pipeline_kwargs, run_pipeline
from engine.registry import ModelSpec
from engine.request import GenerationRequest

PER_REQUEST, BATCHED, ENGINE = "diffusers", "diffusers batched", "engine"
SYSTEMS = (PER_REQUEST, BATCHED, ENGINE)
# Arguments that differ per request inside one batched pipeline call; everything else must be equal.
LIST_ARGUMENTS = ("prompt", "negative_prompt", "generator")


def batch_key(request: GenerationRequest) -> tuple:
    """Requests with equal keys can share one pipeline call."""
    return (request.num_frames, request.height, request.width, request.num_inference_steps, request.guidance_scale)


def batched_call_kwargs(spec: ModelSpec, requests: list[GenerationRequest]) -> dict[str, Any]:
    """One pipeline call's arguments for requests of one `batch_key`: per-request prompts and generators as lists."""
    calls = [pipeline_kwargs(spec, r) for r in requests]
    merged = dict(calls[0])
    for name in LIST_ARGUMENTS:
        if name in merged:
            merged[name] = [call[name] for call in calls]
    return merged


def run_diffusers_batched(
    pipe: Any, spec: ModelSpec, mix: list[GenerationRequest], arrivals: list[float], max_batch: int = 16
) -> tuple[float, list[float], list[np.ndarray], list[int]]:
    """Serve the oldest waiting request with every arrived request of its key; (seconds, latencies, frames, sizes)."""
    start = time.perf_counter()
    latencies: list[float] = [0.0] * len(mix)
    frames: list[np.ndarray | None] = [None] * len(mix)
    sizes: list[int] = []
    pending = list(range(len(mix)))  # arrival order
    while pending:
        wait = start + arrivals[pending[0]] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        now = time.perf_counter() - start
        key = batch_key(mix[pending[0]])
        chosen = [i for i in pending if arrivals[i] <= now and batch_key(mix[i]) == key][:max_batch]
        videos = pipe(**batched_call_kwargs(spec, [mix[i] for i in chosen])).frames
        _sync(pipe.transformer.device)
        done = time.perf_counter()
        for i, video in zip(chosen, videos, strict=True):
            frames[i], latencies[i] = video, done - (start + arrivals[i])
        sizes += [len(chosen)] * len(chosen)
        pending = [i for i in pending if i not in chosen]
    return time.perf_counter() - start, latencies, frames, sizes


def _max_diff(frames: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(frames, reference, strict=True))


def compare_mixed(
    size: str,
    family: str,
    spec: ModelSpec,
    adapter: FamilyAdapter,
    mix: list[GenerationRequest],
    warmup: list[GenerationRequest],
    engine_options: dict[str, Any] | None = None,
    repeats: int = 1,
    log=print,
) -> list[Measurement]:
    """All three systems, both arrival patterns, best of `repeats` each (alternating), then a FLOP-counting run.

    Each Measurement's `extra` holds `breakdown` (seconds per stage, from its own run), `transformer_flops`
    (from the counting run) and `mean_batch` (requests per forward for the engine, per call for batched diffusers).
    """
    pipe = adapter.pipe
    engine = Engine(spec, adapter=adapter, output="float32", **(engine_options or {}))

    def serve(system: str, arrivals: list[float], count_flops: bool = False) -> tuple[Any, ...]:
        if system == ENGINE:
            engine.texts.clear()  # prompts of the mix are encoded inside the timed run
            clock = engine_clock(engine, count_flops)
            with clock:
                seconds, latencies, frames, sizes = run_engine(engine, mix, arrivals)
        else:
            clock = pipeline_clock(pipe, count_flops)
            with clock:
                if system == PER_REQUEST:
                    seconds, latencies, frames = in_worker_thread(run_diffusers, pipe, spec, mix, arrivals)
                    sizes = [1] * len(mix)
                else:
                    seconds, latencies, frames, sizes = in_worker_thread(
                        run_diffusers_batched, pipe, spec, mix, arrivals
                    )
        return seconds, latencies, frames, sizes, clock

    try:
        # Warm every system up on every shape (kernel choice, allocator) with prompts outside the mix.
        for request in warmup:
            in_worker_thread(run_pipeline, pipe, spec, request)
        in_worker_thread(run_diffusers_batched, pipe, spec, warmup[:2], [0.0, 0.0])
        engine.generate(warmup)
        out: list[Measurement] = []
        gap = None
        for arrival in ("together", "staggered"):
            arrivals = arrival_times(len(mix), arrival, gap or 0.0)
            best: dict[str, Measurement] = {}
            reference: list[np.ndarray] = []
            # Best of `repeats`, the systems in turn, so a burst of load elsewhere hurts none of them alone.
            for _ in range(repeats):
                for system in SYSTEMS:
                    with PeakRSS() as rss:
                        seconds, latencies, frames, sizes, clock = serve(system, arrivals)
                    if system == PER_REQUEST:
                        reference = reference or frames
                    diff = None if system == PER_REQUEST else _max_diff(frames, reference)
                    run = Measurement(size, family, arrival, system, len(mix), seconds, latencies, rss.peak_mb, diff)
                    run.extra.update(breakdown=clock.breakdown(), mean_batch=float(np.mean(sizes)))
                    if system not in best or run.seconds < best[system].seconds:
                        best[system] = run
            if gap is None:
                # Staggered arrivals come 8x faster than diffusers serves them, as a busy service sees them.
                gap = best[PER_REQUEST].seconds / len(mix) / 8
            out += [best[s] for s in SYSTEMS]
            rate = {s: best[s].requests_per_minute for s in SYSTEMS}
            log(
                f"  {size:5s} {family:12s} {arrival:9s} mixed: diffusers {rate[PER_REQUEST]:8.1f} req/min"
                f" | batched {rate[BATCHED]:8.1f} | engine {rate[ENGINE]:8.1f}"
                f" ({rate[ENGINE] / rate[PER_REQUEST]:.2f}x, {rate[ENGINE] / rate[BATCHED]:.2f}x batched;"
                f" max |diff| {best[ENGINE].max_abs_diff:.1e})",
            )
        # The transformer's FLOPs per system, counted in an untimed run (the counter slows every operation).
        flops = {s: serve(s, [0.0] * len(mix), count_flops=True)[-1].flops for s in SYSTEMS}
        for m in out:
            m.extra["transformer_flops"] = flops[m.system]
        return out
    finally:
        engine.close()


def _seconds_by_size(measurements: list[Measurement]) -> dict[str, dict[str, float]]:
    seconds: dict[str, dict[str, float]] = {}
    for m in measurements:
        per_size = seconds.setdefault(m.size, {})
        per_size[m.system] = per_size.get(m.system, 0.0) + m.seconds
    return seconds


def ratio_lines(measurements: list[Measurement]) -> str:
    """Per size: diffusers' (one call per request) total seconds over the engine's, all families and arrivals."""
    return "\n".join(
        f"throughput_vs_diffusers[{size},mixed]: {s[PER_REQUEST] / s[ENGINE]:.2f}x"
        for size, s in _seconds_by_size(measurements).items()
    )


def batched_ratios(measurements: list[Measurement]) -> dict[str, float]:
    """Per size: batched diffusers' total seconds over the engine's."""
    return {size: s[BATCHED] / s[ENGINE] for size, s in _seconds_by_size(measurements).items()}


BREAKDOWN_HEADER = (
    "| size | family | system | seconds | "
    + " | ".join(STAGES)
    + " | transformer GFLOP | transformer GFLOP/s | of matmul peak |"
)


def breakdown_table(measurements: list[Measurement], peaks: dict[str, float]) -> str:
    """Where each system's time went, all requests arriving together: seconds (share) per stage, and FLOP/s.

    `peaks` maps a size to the matmul FLOP/s measured in the same run in that size's transformer dtype.
    """
    lines = [BREAKDOWN_HEADER, "|" + "---|" * (BREAKDOWN_HEADER.count("|") - 1)]
    for m in measurements:
        if m.arrival != "together":
            continue
        parts = m.extra["breakdown"]
        total = sum(parts.values())
        cells = [f"{parts[s]:.2f} ({100 * parts[s] / total:.0f}%)" for s in STAGES]
        flops = m.extra.get("transformer_flops", 0)
        rate = flops / parts[TRANSFORMER] if parts[TRANSFORMER] > 0 else 0.0
        lines.append(
            f"| {m.size} | {m.family} | {m.system} | {m.seconds:.2f} | {' | '.join(cells)} | "
            f"{flops / 1e9:.3g} | {rate / 1e9:.3g} | {100 * rate / peaks[m.size]:.2g}% |"
        )
    return "\n".join(lines)


def section(measurements: list[Measurement], peaks: dict[str, float], command: str, where: str) -> str:
    """The BENCHMARKS.md section's body: how it was measured, the throughput table, the breakdown, the lines."""
    from engine.bench.report import table

    families = sorted({m.family for m in measurements})
    peak_text = ", ".join(f"{size} {rate / 1e9:.0f} GFLOP/s" for size, rate in peaks.items())
    batched = ", ".join(f"{size} {r:.2f}x" for size, r in batched_ratios(measurements).items())
    return (
        f"`{command}` on {where}.\n\n"
        f"Each family ({', '.join(families)}) serves {measurements[0].requests} requests of mixed shape: at least 12 "
        "distinct (frames, height, width) per family (engine/bench/mix.py `mixed_request_mix`), 3-8 steps, guidance "
        "on and off, prompts of three lengths, a shared negative prompt on two in three. Three systems on the same "
        "components and seeds: *diffusers*, one pipeline call per request, first come first served; *diffusers "
        "batched*, one pipeline call for the oldest waiting request and every arrived request that shares its "
        "frames, size, steps and guidance (prompts and generators as lists); and the engine. *together*: all "
        "arrive at once; *staggered*: one every 1/8 of diffusers' mean service time. *mean batch*: requests per "
        "pipeline call (batched) or per transformer forward (engine). *max abs diff*: frames against diffusers' "
        "one call per request (float, [0, 1]).\n\n"
        f"{table(measurements)}\n\n"
        "Where the time went, all requests arriving together: seconds (share of the run) per stage, timed around "
        "each system's own stage entry points (engine: `encode_prompts`, the runner's forward, `scheduler_step`, "
        "`decode`; diffusers: `encode_prompt`, the transformer's forward, `scheduler.step`, `vae.decode` and the "
        "video post-processing); *other* is the rest of the wall time (latents, guidance, loop, Python). "
        "*transformer GFLOP*: counted by torch's `FlopCounterMode` around the same calls in a separate, untimed run "
        "(matmuls and attention); GFLOP/s: that over the timed run's transformer seconds; *of matmul peak*: against "
        f"the best square matmul measured in the same run in the transformer's dtype ({peak_text}).\n\n"
        f"{breakdown_table(measurements, peaks)}\n\n"
        f"Engine over diffusers batched (same sums): {batched}.\n\n"
        f"```\n{ratio_lines(measurements)}\n```\n"
    )
