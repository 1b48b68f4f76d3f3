"""`python -m engine.bench.layer_split`: the layer-split row: Wan over 2 CPU processes (gloo) against one process.

On CPU the point is not speed but what each stage holds and how busy it is: parameters and peak RSS per stage,
the pipeline's idle fraction per stage, bytes sent per forward, and that the frames equal one process's.
Writes its own `<!-- engine-bench:layer-split -->` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _requests(n: int, steps: int) -> list:
    from engine.request import GenerationRequest

    # Two shapes, so each iteration has two planner groups: two micro-batches in flight over two stages.
    return [
        GenerationRequest(
            id=f"r{i}",
            prompt=f"a {['red', 'green', 'blue', 'yellow'][i % 4]} square moving left",
            negative_prompt="",
            num_frames=9,
            height=32,
            width=32 if i % 2 else 48,
            num_inference_steps=steps,
            guidance_scale=5.0,
            seed=i,
        )
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench.layer_split", description=__doc__)
    parser.add_argument("--size", default="small", choices=("tiny", "small"))
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per stage process")
    parser.add_argument("--model-dir", default=os.environ.get("VIDSERVE_MODEL_DIR", "var/models"))
    parser.add_argument("--output", default="BENCHMARKS.md", help="markdown file to update ('' to skip)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from engine import Engine
    from engine.registry import ModelLimits, ModelSpec
    from engine.tiny import build_models

    torch.set_num_threads(args.threads)
    folder = build_models(Path(args.model_dir) / args.size, ["wan"], size=args.size)["wan"]
    spec = ModelSpec(name=f"{args.size}-wan", family="wan", path=str(folder), limits=ModelLimits(max_height=64))
    requests = _requests(args.requests, args.steps)

    with Engine(spec, output="float32") as single:
        single.generate(requests[:2])  # warm
        start = time.perf_counter()
        expected = single.generate(requests)
        single_s = time.perf_counter() - start
    with Engine(replace(spec, layer_split=args.stages), output="float32") as split:
        runner = split.runner
        split.generate(requests[:2])
        busy_before = [s["busy_s"] for s in runner.stage_stats()]
        pipeline_before, sent_before = runner.pipeline_s, runner._channel.bytes_sent
        forwards_before = runner.forwards
        start = time.perf_counter()
        results = split.generate(requests)
        split_s = time.perf_counter() - start
        stats = runner.stage_stats()
        pipeline_s = runner.pipeline_s - pipeline_before
        forwards = runner.forwards - forwards_before
        sent_per_forward = (runner._channel.bytes_sent - sent_before) / max(1, forwards)
        plan = runner.plans[0]
    diff = max(float(np.abs(a.frames - b.frames).max()) for a, b in zip(expected, results, strict=True))
    rows = []
    for stage, before in zip(stats, busy_before, strict=True):
        busy = stage["busy_s"] - before
        rows.append(
            f"| {stage['stage']} | {len(plan.ranges[stage['stage']])} | {plan.stage_params[stage['stage']]:,} | "
            f"{stage['param_bytes'] / 2**20:.2f} | {stage['max_rss_bytes'] / 2**20:.0f} | {busy:.2f} | "
            f"{1 - busy / pipeline_s:.0%} |"
        )
    body = "\n".join(
        [
            "",
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{args.threads} intra-op thread(s) per stage; {args.requests} requests x {args.steps} steps, two "
            f"shapes (two micro-batches per iteration). Measured {time.strftime('%Y-%m-%d')}.",
            "",
            "| stage | blocks | parameters | parameter MiB held | peak RSS MiB | busy s | idle |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"- Frames equal one process's: max abs difference {diff:.1e}.",
            f"- Wall time: one process {single_s:.2f} s, split {split_s:.2f} s ({forwards} micro-batch forwards, "
            f"{sent_per_forward / 1024:.0f} KiB sent per forward from stage 0 to stage 1, counted on stage 0).",
            "- Idle = 1 - busy / time stage 0 spent inside pipelined forwards. Stage 0 also embeds and guides; on",
            "  2 shared cores the stages contend for the CPU, so wall time says nothing about GPUs.",
            "- Still to measure on GPUs: per-stage forward time and transfer time over NCCL for a real Wan 1.3B/14B,",
            "  from which a 2- and 4-GPU run's throughput follows (max stage time + transfer per micro-batch).",
        ]
    )
    print(body)
    if args.output:
        from engine.bench.report import write_section

        write_section(
            Path(args.output), "layer-split", f"Layer split (cpu, {args.size} Wan, {args.stages} gloo processes)", body
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
