"""`python -m engine.bench.checkpoint`: what checkpointing costs a running request, per model size and interval.

A batch of requests runs with checkpoints off, every 10 steps and every step; each checkpoint is serialised on a
background thread as the worker does before its upload (the upload itself is I/O on that thread). Writes its own
`<!-- engine-bench:checkpoint -->` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INTERVALS = (0, 10, 1)


def _requests(n: int, steps: int) -> list:
    from engine.request import GenerationRequest

    return [
        GenerationRequest(
            id=f"r{i}",
            prompt=f"a {['red', 'green', 'blue', 'yellow'][i % 4]} circle moving up",
            num_frames=9,
            height=32,
            width=32,
            num_inference_steps=steps,
            guidance_scale=5.0,
            seed=i,
        )
        for i in range(n)
    ]


def _timed_snapshots(seconds: list[float]) -> None:
    """Time every `engine.checkpoint.snapshot` the loop takes (the part of a checkpoint the loop pays)."""
    from engine import checkpoint

    original = checkpoint.snapshot

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    checkpoint.snapshot = timed


def _measure(
    engine, requests: list, every: int, pool: ThreadPoolExecutor, serialise_s: list[float]
) -> tuple[float, int, int]:
    """Wall seconds for the batch, checkpoints taken, and bytes of the last one serialised."""
    sizes: list[int] = []

    def serialise(checkpoint) -> None:
        start = time.perf_counter()
        sizes.append(len(checkpoint.to_bytes()))
        serialise_s.append(time.perf_counter() - start)

    def upload(checkpoint) -> None:  # the worker's JobCheckpoints.offer, minus the network
        pool.submit(serialise, checkpoint)

    start = time.perf_counter()
    futures = [engine.submit(r, checkpoint_every=every, on_checkpoint=upload if every else None) for r in requests]
    for future in futures:
        future.result()
    elapsed = time.perf_counter() - start
    pool.submit(lambda: None).result()  # the serialisations queued behind the last step
    return elapsed, len(sizes), sizes[-1] if sizes else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench.checkpoint", description=__doc__)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, interleaved; the fastest counts")
    parser.add_argument("--model-dir", default=os.environ.get("VIDSERVE_MODEL_DIR", "var/models"))
    parser.add_argument("--output", default="BENCHMARKS.md", help="markdown file to update ('' to skip)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from engine import Engine
    from engine.registry import ModelLimits, ModelSpec
    from engine.tiny import build_models

    rows = []
    requests = _requests(args.requests, args.steps)
    snapshot_s: list[float] = []
    _timed_snapshots(snapshot_s)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload") as pool:
        for size in ("tiny", "small"):
            folder = build_models(Path(args.model_dir) / size, ["wan"], size=size)["wan"]
            limits = ModelLimits(max_height=64, max_steps=max(50, args.steps))
            spec = ModelSpec(name=f"{size}-wan", family="wan", path=str(folder), limits=limits)
            with Engine(spec) as engine:
                engine.generate(requests[:2])  # warm
                best: dict[int, tuple[float, int, int]] = {}
                snapshot_s.clear()
                serialise_s: list[float] = []
                for _ in range(args.repeats):
                    for every in INTERVALS:  # interleaved, so a noisy moment hits every setting alike
                        run = _measure(engine, requests, every, pool, serialise_s)
                        if every not in best or run[0] < best[every][0]:
                            best[every] = run
            base = best[0][0]
            iteration_ms = base / args.steps * 1000
            copy_ms, serialise_ms = float(np.median(snapshot_s)) * 1000, float(np.median(serialise_s)) * 1000
            for every in INTERVALS[1:]:
                seconds, _taken, nbytes = best[every]
                # Every request of the batch pays a copy and a serialisation once per `every` iterations.
                cost = args.requests * (copy_ms + serialise_ms) / (every * iteration_ms)
                rows.append(
                    f"| {size} Wan | {every} | {iteration_ms:.1f} | {copy_ms:.2f} | {serialise_ms:.2f} | "
                    f"{nbytes / 1024:.0f} | {cost:.1%} | {(seconds / base - 1):+.1%} |"
                )
            print("\n".join(rows[-2:]), flush=True)

    body = "\n".join(
        [
            "",
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op thread(s); {args.requests} requests x {args.steps} steps batched "
            f"together, 9 frames 32x32, CFG; fastest of {args.repeats} interleaved runs. Measured "
            f"{time.strftime('%Y-%m-%d')} (`python -m engine.bench.checkpoint`, part of `make bench`).",
            "",
            "| model | every N steps | ms per iteration | copy ms (loop) | serialise ms (thread) | KiB each | "
            "overhead (from the costs) | overhead (wall, measured) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "- Overhead from the costs: requests x (copy + serialise) / (N x iteration), per checkpoint medians;",
            "  the wall-clock difference is the same thing measured end to end, and on a shared, loaded CPU its",
            "  noise (tens of %, either sign, while other jobs share the 2 cores) swamps the effect at N = 10.",
            "- Each checkpoint is copied to CPU on the engine's loop (latents, generator, scheduler tensors) and",
            "  serialised on a background thread, as the worker does before its upload; the upload is network I/O",
            "  on that thread and is not in these numbers. Per checkpoint the loop pays the copy; the process pays",
            "  the serialisation (the GIL is shared, so on a CPU-bound machine it shows as loop time too).",
            "- On a GPU the copy is a device-to-host transfer of the latents (Wan 14B at 81 frames 720p: about",
            "  20 MB, a few ms) against steps of seconds: the default of every 10 steps costs well under 1%.",
        ]
    )
    print(body)
    if args.output:
        from engine.bench.report import write_section

        write_section(Path(args.output), "checkpoint", "Checkpoint overhead (cpu, Wan)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
