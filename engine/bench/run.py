"""Serves one request mix two ways, (a) diffusers one pipeline call per request and (b) the engine, and measures.

Arrivals come "together" (capacity) or "staggered" (a stream faster than diffusers serves, so requests
join mid-way); both see the same components, seeds and parameters, and their frames are compared too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch

from engine.engine import Engine
from engine.families.base import FamilyAdapter
from engine.reference import run_pipeline
from engine.registry import ModelSpec
from engine.request import GenerationRequest


@dataclass
class Measurement:
    size: str
    family: str
    arrival: str
    system: str  # "diffusers" or "engine"
    requests: int
    seconds: float
    latencies: list[float]
    peak_rss_mb: float
    max_abs_diff: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def requests_per_minute(self) -> float:
        return 60.0 * self.requests / self.seconds

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))


class PeakRSS:
    """Samples this process's resident memory in a thread; `peak` is the highest seen (MB)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def arrival_times(n: int, arrival: str, gap: float) -> list[float]:
    return [0.0] * n if arrival == "together" else [i * gap for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def in_worker_thread(fn, *args):
    """Run `fn` on a fresh thread with the process's intra-op thread count, as the engine's loop runs.

    The main thread's OpenMP team behaves differently from a worker thread's (on a busy machine, many
    times slower for small kernels), so both systems are measured from a worker thread, as a server runs.
    """
    threads, box = torch.get_num_threads(), {}

    def target():
        torch.set_num_threads(threads)
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_diffusers(
    pipe: Any, spec: ModelSpec, mix: list[GenerationRequest], arrivals: list[float]
) -> tuple[float, list[float], list[np.ndarray]]:
    """One pipeline call per request, first come first served; returns (seconds, latencies, frames)."""
    start = time.perf_counter()
    latencies, frames = [], []
    for request, at in zip(mix, arrivals, strict=True):
        wait = start + at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        frames.append(run_pipeline(pipe, spec, request))
        _sync(pipe.transformer.device)
        latencies.append(time.perf_counter() - (start + at))
    return time.perf_counter() - start, latencies, frames


def run_engine(
    engine: Engine, mix: list[GenerationRequest], arrivals: list[float]
) -> tuple[float, list[float], list[np.ndarray], list[int]]:
    """Submit each request at its arrival time; returns (seconds, latencies, frames, forward batch sizes)."""
    done_at: dict[str, float] = {}

    def stamp(request_id: str):
        return lambda _future: done_at.__setitem__(request_id, time.perf_counter())

    start = time.perf_counter()
    futures = []
    for request, at in zip(mix, arrivals, strict=True):
        wait = start + at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        future = engine.submit(request)
        future.add_done_callback(stamp(request.id))
        futures.append(future)
    results = [f.result() for f in futures]
    end = max(done_at.values())
    latencies = [done_at[r.id] - (start + at) for r, at in zip(mix, arrivals, strict=True)]
    sizes = [s for r in results for s in r.stats.batch_sizes]
    return end - start, latencies, [r.frames for r in results], sizes


def compare(
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
    """Both systems, both arrival patterns, on the same loaded components."""
    pipe = adapter.pipe
    engine = Engine(spec, adapter=adapter, output="float32", **(engine_options or {}))
    try:
        # Warm both up on every shape (kernel choice, allocator) with prompts outside the mix.
        for request in warmup:
            in_worker_thread(run_pipeline, pipe, spec, request)
        engine.generate(warmup)
        out: list[Measurement] = []
        gap = None
        for arrival in ("together", "staggered"):
            arrivals = arrival_times(len(mix), arrival, gap or 0.0)
            base = mine = None
            # Best of `repeats`, alternating the two systems, so a burst of load elsewhere hurts neither alone.
            for _ in range(repeats):
                _reset_gpu_peak(adapter.device)
                with PeakRSS() as rss:
                    seconds, latencies, reference = in_worker_thread(run_diffusers, pipe, spec, mix, arrivals)
                run = Measurement(size, family, arrival, "diffusers", len(mix), seconds, latencies, rss.peak_mb)
                run.extra["gpu_peak_gb"] = _gpu_peak(adapter.device)
                base = run if base is None or run.seconds < base.seconds else base

                engine.texts.clear()  # prompts of the mix are encoded inside the timed run
                _reset_gpu_peak(adapter.device)
                with PeakRSS() as rss:
                    seconds, latencies, frames, sizes = run_engine(engine, mix, arrivals)
                diff = max(float(np.abs(a - b).max()) for a, b in zip(frames, reference, strict=True))
                run = Measurement(size, family, arrival, "engine", len(mix), seconds, latencies, rss.peak_mb, diff)
                run.extra["mean_batch"] = float(np.mean(sizes))
                run.extra["gpu_peak_gb"] = _gpu_peak(adapter.device)
                mine = run if mine is None or run.seconds < mine.seconds else mine
            if gap is None:
                # Staggered arrivals come 8x faster than diffusers serves them, as a busy service sees them.
                gap = base.seconds / len(mix) / 8
            out += [base, mine]
            ratio = mine.requests_per_minute / base.requests_per_minute
            log(
                f"  {size:5s} {family:12s} {arrival:9s} diffusers {base.requests_per_minute:8.1f} req/min"
                f" | engine {mine.requests_per_minute:8.1f} req/min ({ratio:.2f}x,"
                f" mean batch {mine.extra['mean_batch']:.1f}, max |diff| {mine.max_abs_diff:.1e})",
            )
        return out
    finally:
        engine.close()
