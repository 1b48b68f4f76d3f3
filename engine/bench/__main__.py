"""`python -m engine.bench [--quick] [--gpu]`: diffusers one call per request vs the engine, same mix and seeds.

Prints a table and `throughput_vs_diffusers[<size>]: <ratio>x` lines; writes a BENCHMARKS.md section and a chart.
Then step caching on the largest CPU size's Wan mix (`--cached`): cached rows, PSNR/SSIM against the uncached
frames, and `throughput_vs_diffusers[<size>,cached]: <ratio>x at <psnr> dB`, in a section of its own.
Last, the mixed-shape mix (`--mixed`, engine.bench.mixed): every family at every size against diffusers one call
per request and diffusers batched, with each system's time per stage and the transformer's FLOP/s, in a section of
its own, ending with `throughput_vs_diffusers[<size>,mixed]: <ratio>x` lines.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer families at the small size (CI, < 3 minutes)")
    parser.add_argument("--gpu", action="store_true", help="on cuda: tiny models and Wan 2.1 1.3B dimensions")
    parser.add_argument("--families", help="comma-separated subset of families")
    parser.add_argument("--sizes", default="tiny,small", help="model sizes on the CPU: tiny,small")
    parser.add_argument("--requests", type=int, default=16, help="requests per mix (at least 16 for the record)")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: 1 on the CPU, torch's choice with --gpu)"
    )
    parser.add_argument("--repeats", type=int, help="runs per measurement, best kept (default: 1 quick, 2 full)")
    parser.add_argument(
        "--cached",
        choices=("on", "only", "off"),
        default="on",
        help="step-caching rows on the largest CPU size's Wan mix: with the rest (on), alone (only), or not (off)",
    )
    parser.add_argument(
        "--mixed",
        choices=("on", "only", "off"),
        default="on",
        help="the mixed-shape mix (16 requests, 12+ shapes) with stage breakdown: with the rest, alone, or not",
    )
    parser.add_argument(
        "--gpu-smoke",
        action="store_true",
        help="the --gpu script on the CPU with tiny models only (the tiny Wan stands in for the 1.3B): a test",
    )
    parser.add_argument("--note", default="", help="words added to the sections' figure lines (e.g. a busy machine)")
    parser.add_argument(
        "--demo",
        choices=("on", "off"),
        default="on",
        help="with the cached rows: the trained demo model (engine/weights/vidserve-shapes), when it is there",
    )
    parser.add_argument("--model-dir", default=os.environ.get("VIDSERVE_MODEL_DIR", "var/models"))
    parser.add_argument("--output", default="BENCHMARKS.md", help="markdown file to update ('' to skip)")
    parser.add_argument("--chart", default=None, help="PNG path (default: beside the markdown file)")
    args = parser.parse_args(argv)

    import diffusers
    import torch

    from engine import families as family_registry
    from engine.bench import report
    from engine.bench.mix import request_mix, warmup_requests
    from engine.bench.run import compare
    from engine.families import FAMILIES, adapter_class
    from engine.registry import BatchLimits, ModelLimits, ModelRegistry, ModelSpec
    from engine.tiny import build_models

    diffusers.utils.logging.set_verbosity_error()
    # One thread by default on the CPU: on a small shared machine OpenMP's spinning barriers made two-thread
    # timings of small kernels swing tenfold from run to run, for both systems alike.
    gpu_script = args.gpu or args.gpu_smoke
    threads = args.threads or (None if args.gpu else 1)
    if threads:
        torch.set_num_threads(threads)
    families = args.families.split(",") if args.families else list(FAMILIES)
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device", file=sys.stderr)
        return 2
    repeats = args.repeats or (1 if args.quick or args.gpu else 2)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    limits = ModelLimits(max_frames=129, max_height=1280, max_width=1280, max_steps=100)
    measurements = []

    def spec_for(family: str, path: str, dtype: str = "float32") -> ModelSpec:
        options = dict(family_registry.get(family).parts.tiny_options)
        return ModelSpec(
            name=f"bench-{family}",
            family=family,
            path=path,
            dtype=dtype,
            devices=(device,),
            limits=limits,
            batch=BatchLimits(max_rows=32, max_tokens=1 << 20),
            options=options,
        )

    sizes = args.sizes.split(",") if not gpu_script else ["tiny"]
    for size in sizes if args.cached != "only" and args.mixed != "only" else []:
        chosen = (
            families if not (args.quick and size == "small") else [f for f in families if f == "wan"] or families[:1]
        )
        print(f"{size}: building models ({', '.join(chosen)})", flush=True)
        paths = build_models(Path(args.model_dir) / size, chosen, size=size)
        for family in chosen:
            spec = spec_for(family, str(paths[family]))
            adapter = adapter_class(family).load(spec)
            mix = request_mix(family, args.requests)
            measurements += compare(size, family, spec, adapter, mix, warmup_requests(mix), repeats=repeats)
            del adapter

    cached_rows = []
    if args.cached != "off" and args.mixed != "only" and not gpu_script:
        from engine.bench.cached import compare_cached

        size, family = sizes[-1], "wan" if "wan" in families else families[0]
        print(f"{size}: step caching ({family})", flush=True)
        path = build_models(Path(args.model_dir) / size, [family], size=size)[family]
        spec = spec_for(family, str(path))
        mix = request_mix(family, args.requests)
        cached_rows = compare_cached(
            size, family, spec, adapter_class(family).load(spec), mix, warmup_requests(mix), repeats
        )
    demo_table = ""
    demo_dir = Path(__file__).resolve().parents[1] / "weights" / "vidserve-shapes"
    if (
        args.cached != "off"
        and args.mixed != "only"
        and args.demo == "on"
        and not gpu_script
        and (demo_dir / "model_index.json").is_file()
    ):
        from engine.bench.cached import compare_demo

        print("vidserve-shapes (trained demo model): step caching", flush=True)
        demo_table = compare_demo(ModelRegistry.from_file().get("vidserve-shapes"))

    gpu_size, gpu_adapter, gpu_batch = None, None, {"max_rows": 16, "max_tokens": 64 * 1024, "max_decode_batch": 2}
    if gpu_script and args.cached != "only":
        if args.gpu_smoke:
            gpu_size, gpu_spec = (
                "smoke",
                spec_for("wan", str(build_models(Path(args.model_dir) / "tiny", ["wan"])["wan"])),
            )
            gpu_adapter = adapter_class("wan").load(gpu_spec)
        else:
            from engine.bench.gpu import wan_1_3b_random
            from engine.families.wan import WanAdapter

            print("wan2.1-1.3b (random weights): building on cuda", flush=True)
            gpu_size, gpu_spec = "1.3B", spec_for("wan", "(in memory)", "bfloat16")
            gpu_adapter = WanAdapter(wan_1_3b_random("cuda"))
    if gpu_adapter is not None and args.mixed != "only":
        mix = request_mix("wan", args.requests, gpu=args.gpu, steps=(8, 12, 16))
        measurements += compare(gpu_size, "wan", gpu_spec, gpu_adapter, mix, warmup_requests(mix), gpu_batch, repeats)

    mixed, peaks = [], {}
    if args.mixed != "off" and args.cached != "only":
        from engine.bench.mix import mixed_request_mix
        from engine.bench.mixed import compare_mixed
        from engine.bench.run import in_worker_thread
        from engine.bench.stages import matmul_peak

        for size in sizes:
            chosen = ([f for f in families if f == "wan"] or families[:1]) if args.quick else families
            print(f"{size}: mixed shapes ({', '.join(chosen)})", flush=True)
            paths = build_models(Path(args.model_dir) / size, chosen, size=size)
            peaks[size] = in_worker_thread(matmul_peak, torch.device(device), torch.float32)
            for family in chosen:
                spec = spec_for(family, str(paths[family]))
                mix = mixed_request_mix(family, args.requests)
                adapter = adapter_class(family).load(spec)
                mixed += compare_mixed(size, family, spec, adapter, mix, warmup_requests(mix), repeats=repeats)
                del adapter
        if gpu_adapter is not None:
            print(f"{gpu_size}: mixed shapes (wan)", flush=True)
            dtype = gpu_adapter.dtype
            peaks[gpu_size] = in_worker_thread(matmul_peak, torch.device(device), dtype)
            mix = mixed_request_mix("wan", args.requests, gpu=args.gpu, steps=(6, 8, 10, 12))
            mixed += compare_mixed(
                gpu_size, "wan", gpu_spec, gpu_adapter, mix, warmup_requests(mix), gpu_batch, repeats
            )

    elapsed = time.perf_counter() - started
    where = torch.cuda.get_device_name(0) if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after" + (
        f" ({args.note})" if args.note else ""
    )
    kind = "gpu" if args.gpu else "gpu-smoke" if args.gpu_smoke else ("cpu-quick" if args.quick else "cpu")
    if measurements:
        print()
        print(report.table(measurements))
        print()
    comparisons = f"{len(measurements) // 2} comparisons and {len(mixed) // 3} mixed"
    print(f"{comparisons} on {where} in {elapsed:.0f} s ({kind}; {load}; best of {repeats})")
    lines = report.ratio_lines(measurements)
    if cached_rows:
        from engine.bench import cached

        cached_table, cached_line = cached.table(cached_rows), cached.ratio_line(cached_rows)
        print()
        print(cached_table)
        lines = "\n".join(filter(None, [lines, cached_line]))
    if args.output and cached_rows:
        first = cached_rows[0]
        body = (
            f"`python -m engine.bench{' --cached only' if args.cached == 'only' else ''}` on {where} "
            f"({platform.machine()}), torch {torch.__version__}, diffusers {diffusers.__version__}; "
            f"{time.strftime('%Y-%m-%d')}, {load}, best of {repeats} run(s) each.\n\n"
            f"The engine-vs-diffusers section's {args.requests} {first.size} {first.family} requests, all arriving "
            "together, served by diffusers (one call per request), by the engine with no reuse at all (no prompt "
            "cache, text projected in every block at every step), with exact reuse only (prompt cache, text K/V "
            "once per request; the default), and with each approximate policy at two strengths, set on every "
            "request. *vs uncached*: throughput over the no-reuse engine's; *vs exact reuse*: over the default "
            "engine's (the approximate policy's own gain). *block evaluations*: transformer blocks run, summed "
            "over rows. PSNR and SSIM: each request's frames against its frames from the no-reuse engine (same "
            "seed), mean and worst over the requests. **Random weights: the quality figures are indicative "
            "only**; a trained model's thresholds differ (first-block thresholds are model-specific). The ratio "
            "line: diffusers' seconds over the engine's at the default approximate setting "
            '(`{"policy": "first_block"}`, threshold 0.2), at that setting\'s mean PSNR.\n\n'
            f"{cached_table}\n\n```\n{cached_line}\n```\n"
        )
        if demo_table:
            body += (
                "\nThe same policies on the trained demo model `vidserve-shapes` (a 6-block Wan trained on coloured "
                "shapes), 12 colour-shape-direction prompts x 2 seeds, 20 steps, all arriving together, one run "
                "each: `engine/demo/checker.py` adherence (fraction of videos read as their prompt says) and "
                "PSNR/SSIM against the frames with `none` (exact reuse only). Trained weights make these figures "
                "the meaningful ones for quality; 24 videos make a 4-point adherence change one video.\n\n"
                f"{demo_table}\n"
            )
        report.write_section(Path(args.output), f"{kind}-cached", f"Step caching ({kind})", body)
    if args.output and measurements:
        out = Path(args.output)
        chart_path = Path(args.chart) if args.chart else out.with_name(f"benchmarks-{kind}.png")
        report.chart(measurements, chart_path, f"vidserve engine vs diffusers ({where})")
        body = (
            f"`python -m engine.bench{' --quick' if args.quick else ''}{' --gpu' if args.gpu else ''}` on "
            f"{where} ({platform.machine()}), torch {torch.__version__}, diffusers {diffusers.__version__}; "
            f"{time.strftime('%Y-%m-%d')}, {elapsed:.0f} s, {load}, best of {repeats} run(s) each.\n\n"
            "Each family serves the same 16 requests (2 lengths x 2 sizes, 4/6/8 steps, guidance on and off, "
            "12 prompts, a shared negative prompt) two ways: diffusers' pipeline, one call per request, first "
            "come first served; and the engine. *together*: all arrive at once; *staggered*: one every 1/8 of "
            "diffusers' mean service time. Latency counts from arrival. Peak RSS is the whole process (both "
            "systems' weights are loaded). *max abs diff*: engine frames vs diffusers frames (float, [0, 1]). "
            "Both systems run from a worker thread with the same intra-op thread count.\n\n"
            + (
                "GPU mode: the tiny models on CUDA (float32), then Wan 2.1 1.3B dimensions with random weights "
                "(bfloat16 transformer, float32 VAE, 4-layer UMT5-width text encoder): 17/33 frames at 256x256 and "
                "320x576, 8/12/16 steps.\n\n"
                if args.gpu
                else ""
            )
            + f"{report.table(measurements)}\n\n![chart]({chart_path.name})\n\n```\n{lines}\n```\n"
        )
        report.write_section(out, kind, f"Engine vs diffusers ({kind})", body)
        print(f"wrote {out} and {chart_path}")
    if mixed:
        from engine.bench import mixed as mixed_report

        mixed_table = report.table(mixed)
        breakdown = mixed_report.breakdown_table(mixed, peaks)
        mixed_lines = mixed_report.ratio_lines(mixed)
        print()
        print(mixed_table)
        print()
        print(breakdown)
        lines = "\n".join(filter(None, [lines, mixed_lines]))
        if args.output:
            command = "python -m engine.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
            body = mixed_report.section(
                mixed,
                peaks,
                command,
                f"{where} ({platform.machine()}), torch {torch.__version__}, diffusers {diffusers.__version__}; "
                f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {elapsed:.0f} s, {load}, "
                f"best of {repeats} run(s) each",
            )
            report.write_section(Path(args.output), f"{kind}-mixed", f"Mixed shapes ({kind})", body)
    print(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
