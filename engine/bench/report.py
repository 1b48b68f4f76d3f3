"""Turns benchmark measurements into the printed table, the ratio lines, a BENCHMARKS.md section and a chart.

BENCHMARKS.md may hold other sections (other benchmarks, other machines): only ours is replaced.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from engine.bench.run import Measurement

HEADER = (
    "| size | family | arrival | system | req/min | p50 latency s | p95 latency s | peak RSS MB | "
    "mean batch | max abs diff |"
)


def table(measurements: list[Measurement]) -> str:
    gpu = any(m.extra.get("gpu_peak_gb") is not None for m in measurements)
    header = HEADER + (" peak GPU GB |" if gpu else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for m in measurements:
        batch = f"{m.extra['mean_batch']:.1f}" if "mean_batch" in m.extra else "1.0"
        diff = "" if m.max_abs_diff is None else f"{m.max_abs_diff:.1e}"
        row = (
            f"| {m.size} | {m.family} | {m.arrival} | {m.system} | {m.requests_per_minute:.1f} | "
            f"{m.latency(50):.3f} | {m.latency(95):.3f} | {m.peak_rss_mb:.0f} | {batch} | {diff} |"
        )
        if gpu:
            row += f" {m.extra.get('gpu_peak_gb') or 0:.1f} |"
        lines.append(row)
    return "\n".join(lines)


def ratios(measurements: list[Measurement]) -> dict[str, float]:
    """Per size: diffusers' total seconds over the engine's, for the same requests (all families, arrivals)."""
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for m in measurements:
        seconds[m.size][m.system] += m.seconds
    return {size: s["diffusers"] / s["engine"] for size, s in seconds.items()}


def ratio_lines(measurements: list[Measurement]) -> str:
    return "\n".join(f"throughput_vs_diffusers[{size}]: {r:.2f}x" for size, r in ratios(measurements).items())


def write_section(path: Path, key: str, title: str, body: str) -> None:
    """Replace (or append) the section between our markers for `key`, keeping everything else."""
    begin, end = f"<!-- engine-bench:{key} -->", f"<!-- /engine-bench:{key} -->"
    section = f"{begin}\n## {title}\n\n{body.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def chart(measurements: list[Measurement], path: Path, title: str) -> None:
    """Requests per minute, diffusers vs engine, one bar pair per (size, family, arrival)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((m.size, m.family, m.arrival) for m in measurements))
    rate = {(m.size, m.family, m.arrival, m.system): m.requests_per_minute for m in measurements}
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(keys)), 4.5))
    x = range(len(keys))
    width = 0.4
    ax.bar([i - width / 2 for i in x], [rate[(*k, "diffusers")] for k in keys], width, label="diffusers, per request")
    ax.bar([i + width / 2 for i in x], [rate[(*k, "engine")] for k in keys], width, label="vidserve engine")
    ax.set_xticks(list(x), [f"{s}\n{f}\n{a}" for s, f, a in keys], fontsize=7)
    ax.set_ylabel("requests / minute")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
