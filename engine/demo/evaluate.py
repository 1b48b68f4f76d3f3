"""Evaluate a demo-model pipeline directory: generate every prompt with fixed seeds, score adherence with the
checker (trained combinations and the held-out ones separately), write JSON + markdown and a sample-grid PNG.

    python -m engine.demo.evaluate engine/weights/vidserve-shapes --report-dir docs/demo-model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from engine.demo import checker, clips

GRID_SCALE = 3


def load_pipeline(path: str | Path) -> object:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(
    pipe: object,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    guidance_scale: float = 5.0,
    batch_size: int = 48,
) -> list[np.ndarray]:
    """One 9-frame 32x32 video (frames × H × W × 3, floats in [0, 1]) per prompt, each with its own seed."""
    videos: list[np.ndarray] = []
    for i in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[i : i + batch_size], seeds[i : i + batch_size]
        out = pipe(
            prompt=chunk,
            negative_prompt=[""] * len(chunk),
            num_frames=clips.NUM_FRAMES,
            height=clips.SIZE,
            width=clips.SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(s) for s in chunk_seeds],
            output_type="np",
        ).frames
        videos.extend(np.asarray(v) for v in out)
    return videos


def adherence(pipe: object, combos: list[tuple[str, str, str]], seeds_per_combo: int, steps: int,
              guidance_scale: float, seed_base: int = 1000) -> tuple[dict[str, float], list[np.ndarray]]:  # fmt: skip
    labels = [c for c in combos for _ in range(seeds_per_combo)]
    seeds = [seed_base + i for i in range(len(labels))]
    videos = generate(pipe, [clips.prompt_for(*c) for c in labels], seeds, steps, guidance_scale)
    result = checker.score(videos, labels)
    result["videos"] = len(videos)
    return result, videos


def long_video_scores(
    videos: list[np.ndarray], labels: list[tuple[str, str, str]], window: int, seams: list[int]
) -> dict[str, float]:
    """Adherence of long videos, read window by window (`window` frames, each next one starting where the last
    ended): per-window colour, shape and direction as prompted; identity (every window of a video reads the
    same colour and shape); seam ratio: the mean absolute frame difference across `seams` (frame indices where a
    window or chunk begins) over the median difference between neighbouring frames inside the video."""
    hits = {"colour": 0, "shape": 0, "direction": 0}
    windows = identical = 0
    seam_diffs: list[float] = []
    inner_diffs: list[float] = []
    for video, label in zip(videos, labels, strict=True):
        frames = checker._as_float_frames(video)
        readings = [
            checker.read(frames[start : start + window]) for start in range(0, len(frames) - window + 1, window - 1)
        ]
        for reading in readings:
            for name, hit in reading.matches(*label).items():
                hits[name] += int(hit)
        windows += len(readings)
        identical += int(len({(r.colour, r.shape) for r in readings}) == 1)
        diffs = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        seam_diffs += [float(diffs[s - 1]) for s in seams if 0 < s < len(frames)]
        inner_diffs += [float(d) for i, d in enumerate(diffs) if i + 1 not in seams]
    scores = {name: hit / max(windows, 1) for name, hit in hits.items()}
    scores["identity"] = identical / max(len(videos), 1)
    inner = float(np.median(inner_diffs)) if inner_diffs else 0.0
    scores["seam_ratio"] = float(np.mean(seam_diffs)) / inner if seam_diffs and inner > 0 else float("nan")
    scores["windows"] = windows
    scores["videos"] = len(videos)
    return scores


def sample_grid(videos: list[np.ndarray], captions: list[str], scale: int = GRID_SCALE) -> Image.Image:
    """Rows of frames, one row per video, captioned on the left."""
    n_frames, h, w, _ = videos[0].shape
    label_w, gap = 190, 2
    cell_h, cell_w = h * scale + gap, w * scale + gap
    grid = Image.new("RGB", (label_w + n_frames * cell_w, len(videos) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (video, caption) in enumerate(zip(videos, captions, strict=True)):
        draw.text((6, r * cell_h + cell_h // 2 - 6), caption, fill=(0, 0, 0))
        for f in range(n_frames):
            frame = np.clip(np.asarray(video[f]) * 255.0 if video.dtype != np.uint8 else video[f], 0, 255)
            img = Image.fromarray(frame.astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
            grid.paste(img, (label_w + f * cell_w, r * cell_h))
    return grid


def grid_prompts() -> list[tuple[str, str, str]]:
    """Every colour-shape pair once, directions cycling, the README's 'a blue circle moving up' among them."""
    dirs = list(clips.DIRECTIONS)
    rows = []
    for i, (colour, shape) in enumerate((c, s) for c in clips.COLOURS for s in clips.SHAPES):
        rows.append((colour, shape, dirs[i % len(dirs)]))
    rows[7] = ("blue", "circle", "up")
    return rows


def evaluate_directory(path: Path, report_dir: Path, seeds_per_combo: int = 2, steps: int = 20,
                       guidance_scale: float = 5.0, extra: dict | None = None) -> dict:  # fmt: skip
    """Score the pipeline at `path` and write evaluation.json, evaluation.md and samples.png to `report_dir`."""
    t0 = time.time()
    pipe = load_pipeline(path)
    seen, _ = adherence(pipe, clips.training_combos(), seeds_per_combo, steps, guidance_scale)
    # Held-out combinations get more seeds: there are only six of them.
    held, _ = adherence(pipe, list(clips.HELD_OUT), max(4, 2 * seeds_per_combo), steps, guidance_scale, 5000)
    rows = grid_prompts()
    grid_videos = generate(pipe, [clips.prompt_for(*r) for r in rows], [7] * len(rows), steps, guidance_scale)
    report_dir.mkdir(parents=True, exist_ok=True)
    sample_grid(grid_videos, [clips.prompt_for(*r)[2:] for r in rows]).save(report_dir / "samples.png")
    size_bytes = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    report = {
        "summary": {
            "colour": seen["colour"],
            "shape": seen["shape"],
            "direction": seen["direction"],
            "held_out_colour": held["colour"],
            "held_out_direction": held["direction"],
            "held_out_shape": held["shape"],
        },
        "trained_combinations": seen,
        "held_out_combinations": {**held, "combos": [" ".join(c) for c in clips.HELD_OUT]},
        "settings": {
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "num_frames": clips.NUM_FRAMES,
            "height": clips.SIZE,
            "width": clips.SIZE,
            "seeds_per_combo": seeds_per_combo,
        },  # fmt: skip
        "pipeline_bytes": size_bytes,
        "eval_seconds": round(time.time() - t0, 1),
        **(extra or {}),
    }
    (report_dir / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    (report_dir / "evaluation.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    s, seen, held = report["summary"], report["trained_combinations"], report["held_out_combinations"]
    st = report["settings"]
    lines = [
        "# vidserve-shapes: evaluation",
        "",
        f"{st['num_frames']} frames, {st['height']}x{st['width']}, {st['num_inference_steps']} steps, "
        f"guidance {st['guidance_scale']}, scored by `engine/demo/checker.py` (chance: colour 25%, shape 33%, "
        "direction 25%).",
        "",
        "| set | videos | colour | shape | direction | all three |",
        "|---|---|---|---|---|---|",
        f"| trained combinations | {seen['videos']} | {seen['colour']:.1%} | {seen['shape']:.1%} | "
        f"{seen['direction']:.1%} | {seen['all']:.1%} |",
        f"| held-out combinations | {held['videos']} | {held['colour']:.1%} | {held['shape']:.1%} | "
        f"{held['direction']:.1%} | {held['all']:.1%} |",
        "",
        f"Held out of training: {', '.join(held['combos'])}.",
        "",
        f"Pipeline size: {report['pipeline_bytes'] / 1e6:.1f} MB.",
    ]
    if "train_seconds" in report:
        lines.append(f"Training wall time: {report['train_seconds'] / 60:.1f} min.")
    lines += ["", "![samples](samples.png)", ""]
    del s
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.demo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="pipeline directory")
    p.add_argument("--report-dir", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=2, help="videos per trained combination")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    args = p.parse_args(argv)
    report = evaluate_directory(args.path, args.report_dir, args.seeds, args.steps, args.guidance)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
