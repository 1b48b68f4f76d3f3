"""`python -m engine.bench.long_video`: what long videos cost, and how well the demo model holds a 20 s video.

For tiny Wan and vidserve-shapes at 1x, 2x, 4x and 8x the native window, each method (windowed co-denoising,
latent continuation): seconds per video, peak RSS, window forwards per step, and the cost against (forwards per
step x the 1x video). Each figure is measured in a fresh process, so peak RSS is that video's own. Then the demo
model's 161-frame (20 s at 8 fps) videos for every prompt, scored window by window (engine.demo.evaluate).
The machine may be shared: every line carries the 1-minute load average when it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("windows", "continuation")


def _spec(model: str, model_dir: str):
    """The registry entry, its long limit raised to eight windows (the benchmark's longest video)."""
    from engine.registry import ModelRegistry
    from engine.tiny import build_models

    if model == "tiny-wan":
        build_models(Path(model_dir) / "tiny", ["wan"], size="tiny")
    spec = ModelRegistry.from_file(model_dir=model_dir).get(model)
    longest = 8 * spec.window_frames
    return replace(spec, limits=replace(spec.limits, max_long_frames=longest))


def _frames_at(spec, multiple: int, temporal: int) -> int:
    """Pixel frames of a video `multiple` native windows long, counted in latent frames."""
    window = (spec.window_frames - 1) // temporal + 1
    return (multiple * window - 1) * temporal + 1


def measure_one(model: str, multiple: int, method: str, steps: int, model_dir: str) -> dict:
    """One video in this process: seconds, peak RSS and window forwards (after a native warm-up video)."""
    import torch

    from engine import Engine
    from engine.request import GenerationRequest

    torch.set_num_threads(1)
    spec = _spec(model, model_dir)
    with Engine(spec) as engine:
        temporal = engine.adapter.temporal_factor
        base = dict(prompt="a red square moving right", height=32, width=32, num_inference_steps=steps)
        base |= dict(guidance_scale=5.0, seed=1)
        engine.generate([GenerationRequest(id="warm", num_frames=spec.window_frames, **base)])
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        request = GenerationRequest(
            id="long",
            num_frames=_frames_at(spec, multiple, temporal),
            long_video=replace(spec.long_video, method=method),
            **base,
        )
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = engine.generate([request])[0]
        seconds = time.perf_counter() - started
    return {
        "model": model,
        "method": method,
        "multiple": multiple,
        "frames": request.num_frames,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 1024,
        "forwards_per_step": len(result.stats.batch_sizes) / steps,
        "load": load,
    }


def demo_adherence(method: str, prompts: int, steps: int, frames: int = 161) -> dict:
    """The demo model's `frames`-frame videos of the first `prompts` prompts, scored window by window."""
    import torch

    from engine import Engine
    from engine.demo import clips
    from engine.demo.evaluate import long_video_scores
    from engine.registry import ModelRegistry

    torch.set_num_threads(1)
    spec = ModelRegistry.from_file().get("vidserve-shapes")
    combos = clips.all_combos()[:prompts]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with Engine(spec) as engine:
        requests = [
            spec.resolve(
                f"demo{i}",
                {
                    "prompt": clips.prompt_for(*combo),
                    "num_frames": frames,
                    "num_inference_steps": steps,
                    "seed": 1000 + i,
                    "long_video": {"method": method},
                },
            )
            for i, combo in enumerate(combos)
        ]
        videos = [r.frames for r in engine.generate(requests)]
        seams = engine.long_videos.seams(requests[0])
    scores = long_video_scores(videos, combos, spec.window_frames, seams)
    return {**scores, "method": method, "frames": frames, "seconds": time.perf_counter() - started, "load": load}


def _in_subprocess(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "engine.bench.long_video", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench.long_video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny-wan,vidserve-shapes")
    parser.add_argument("--multiples", default="1,2,4,8", help="lengths, in native windows")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=8, help="denoising steps of the cost rows")
    parser.add_argument("--demo-prompts", type=int, default=48, help="demo-model prompts at 161 frames (0: skip)")
    parser.add_argument("--demo-steps", type=int, default=20)
    parser.add_argument("--model-dir", default=os.environ.get("VIDSERVE_MODEL_DIR", "var/models"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # model:multiple:method, measured in this process
    parser.add_argument("--demo-one", help=argparse.SUPPRESS)  # method, the demo model's adherence
    args = parser.parse_args(argv)

    if args.one:
        model, multiple, method = args.one.split(":")
        print(json.dumps(measure_one(model, int(multiple), method, args.steps, args.model_dir)))
        return 0
    if args.demo_one:
        print(json.dumps(demo_adherence(args.demo_one, args.demo_prompts, args.demo_steps)))
        return 0

    common = ["--steps", str(args.steps), "--model-dir", args.model_dir]
    for model in args.models.split(","):
        for method in args.methods.split(","):
            native = None
            for multiple in [int(m) for m in args.multiples.split(",")]:
                row = _in_subprocess(["--one", f"{model}:{multiple}:{method}", *common])
                native = native or row
                cost = row["seconds"] / (row["forwards_per_step"] / native["forwards_per_step"] * native["seconds"])
                memory = row["peak_rss_mb"] / native["peak_rss_mb"]
                print(
                    f"long_video[{model},{method},{multiple}x]: {row['frames']} frames, {row['seconds']:.2f} s/video, "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB ({memory:.2f}x of 1x), "
                    f"{row['forwards_per_step']:.2f} forwards/step, cost {cost:.2f}x of forwards x native "
                    f"(load {row['load']:.1f})",
                    flush=True,
                )
    if args.demo_prompts:
        for method in args.methods.split(","):
            demo = [
                "--demo-one",
                method,
                "--demo-prompts",
                str(args.demo_prompts),
                "--demo-steps",
                str(args.demo_steps),
            ]
            s = _in_subprocess(demo)
            label = f"demo_long[vidserve-shapes,{method},{s['frames']} frames,{s['videos']} videos]"
            for name in ("colour", "shape", "direction"):
                print(f"{label}: per-window {name} {s[name]:.1%} (load {s['load']:.1f})")
            print(f"{label}: identity kept {s['identity']:.1%} (load {s['load']:.1f})")
            print(f"{label}: seam ratio {s['seam_ratio']:.2f} (load {s['load']:.1f})")
            print(f"{label}: {s['seconds']:.0f} s for all videos (load {s['load']:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
