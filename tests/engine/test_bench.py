"""The benchmark runs end to end and reports in the agreed format (speed is reported, never asserted)."""

from __future__ import annotations

import re

import numpy as np

from engine import families
from engine.bench.__main__ import main
from engine.bench.mix import mixed_request_mix
from engine.bench.mixed import run_diffusers_batched
from engine.bench.report import write_section
from engine.bench.stages import SCHEDULER, STAGES, TEXT, TRANSFORMER, VAE, engine_clock
from engine.families import FAMILIES
from engine.reference import run_pipeline


def test_the_benchmark_prints_a_ratio_line_per_size_and_writes_its_section_and_chart(model_dir, tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    args = ["--sizes", "tiny", "--families", "wan", "--requests", "4", "--repeats", "1", "--demo", "off"]
    assert main([*args, "--model-dir", str(model_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^throughput_vs_diffusers\[tiny\]: \d+\.\d+x$", printed, re.M)
    assert re.search(r"^throughput_vs_diffusers\[tiny,cached\]: \d+\.\d+x at \d+\.\d dB$", printed, re.M)
    # The mixed-shape section comes last, and its line is the last one printed.
    assert re.fullmatch(r"throughput_vs_diffusers\[tiny,mixed\]: \d+\.\d+x", printed.strip().splitlines()[-1])
    text = out.read_text()
    assert "| tiny | wan | staggered | engine |" in text
    assert "<!-- engine-bench:cpu-cached -->" in text and "| tiny | wan | engine | first_block 0.2 (default) |" in text
    assert (tmp_path / "benchmarks-cpu.png").stat().st_size > 0
    assert_mixed_section(text, "cpu-mixed", ["tiny"])


def assert_mixed_section(text: str, key: str, sizes: list[str]) -> None:
    """Three systems per arrival, a breakdown row per system with every stage and the FLOP/s, the ratio lines."""
    section = text.split(f"<!-- engine-bench:{key} -->")[1].split(f"<!-- /engine-bench:{key} -->")[0]
    for size in sizes:
        for arrival in ("together", "staggered"):
            for system in ("diffusers", "diffusers batched", "engine"):
                assert f"| {size} | wan | {arrival} | {system} |" in section
        for system in ("diffusers", "diffusers batched", "engine"):
            row = re.search(rf"^\| {size} \| wan \| {system} \| (.*)\|$", section, re.M)
            assert row, (size, system)
            cells = [c.strip() for c in row.group(1).split("|")]
            seconds, stages, gflop = float(cells[0]), cells[1:6], float(cells[6])
            assert seconds > 0 and all(re.fullmatch(r"\d+\.\d\d \(\d+%\)", c) for c in stages), cells
            assert float(stages[1].split()[0]) > 0 and float(stages[3].split()[0]) > 0  # transformer, VAE decode
            assert gflop > 0 and cells[8].endswith("%"), cells
        assert re.search(rf"^throughput_vs_diffusers\[{size},mixed\]: \d+\.\d+x$", section, re.M)


def test_the_gpu_script_runs_its_mixed_mix_on_the_cpu_in_smoke_mode(model_dir, tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    args = ["--gpu-smoke", "--families", "wan", "--requests", "4", "--mixed", "only", "--note", "a test"]
    assert main([*args, "--model-dir", str(model_dir), "--output", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"throughput_vs_diffusers\[tiny,mixed\]: \d+\.\d+x", lines[-2])
    assert re.fullmatch(r"throughput_vs_diffusers\[smoke,mixed\]: \d+\.\d+x", lines[-1])
    text = out.read_text()
    assert "## Mixed shapes (gpu-smoke)" in text and "(a test)" in text
    assert_mixed_section(text, "gpu-smoke-mixed", ["tiny", "smoke"])


def test_every_familys_mixed_mix_has_twelve_valid_shapes_and_mixed_steps_guidance_and_prompt_lengths():
    for family in FAMILIES:
        mix = mixed_request_mix(family, 16)
        assert len(mix) == 16 and len({r.id for r in mix}) == 16
        assert len({(r.num_frames, r.height, r.width) for r in mix}) >= 12, family
        assert len({r.num_inference_steps for r in mix}) >= 3
        assert {r.guidance_scale > 1.0 for r in mix} == {True, False}
        assert len({len(r.prompt.split()) for r in mix}) >= 6
        rules = families.get(family).rules
        for r in mix:
            rules.check_frames(r.num_frames)
            rules.check_size("height", r.height)
            rules.check_size("width", r.width)
    assert len({(r.num_frames, r.height, r.width) for r in mixed_request_mix("wan", 16, gpu=True)}) >= 12


def test_batched_diffusers_serves_requests_that_share_a_call_in_one_call_with_each_ones_own_frames(specs, make_request):
    from engine.families import adapter_class

    spec = specs["wan"]
    pipe = adapter_class("wan").load(spec).pipe
    mix = [
        make_request("wan", "a", prompt="a red fox in the snow", seed=1),
        make_request("wan", "b", num_frames=5),  # its own key: a call of its own
        make_request("wan", "c", prompt="waves at sunset", negative_prompt="blurry", seed=2),
    ]
    calls = []
    pipe_call = type(pipe).__call__

    def counting_call(self, **kwargs):
        calls.append(kwargs["prompt"])
        return pipe_call(self, **kwargs)

    type(pipe).__call__ = counting_call
    try:
        _, latencies, frames, sizes = run_diffusers_batched(pipe, spec, mix, [0.0, 0.0, 0.0])
    finally:
        type(pipe).__call__ = pipe_call
    assert calls == [["a red fox in the snow", "waves at sunset"], [mix[1].prompt]]
    assert sizes == [2, 2, 1] and all(latency > 0 for latency in latencies)
    for request, video in zip(mix, frames, strict=True):
        alone = run_pipeline(pipe, spec, request)
        assert video.shape == alone.shape and float(np.abs(video - alone).max()) <= 1e-5


def test_the_stage_clock_times_each_engine_stage_counts_flops_and_leaves_nothing_installed(specs, make_request):
    from engine import Engine

    engine = Engine(specs["wan"], output="float32")
    try:
        with engine_clock(engine, count_flops=True) as clock:
            engine.generate([make_request("wan", "x"), make_request("wan", "y", height=48, guidance_scale=1.0)])
        parts = clock.breakdown()
        assert set(parts) == set(STAGES) and all(parts[s] > 0 for s in (TEXT, TRANSFORMER, SCHEDULER, VAE))
        assert abs(sum(parts.values()) - clock.total) < 1e-6
        assert clock.flops > 0
        adapter = engine.adapter
        assert not {"encode_prompts", "scheduler_step", "decode"} & set(vars(adapter)) and "run_all" not in vars(
            engine.runner
        )
        seconds = dict(clock.seconds)
        engine.generate([make_request("wan", "z")])
        assert dict(clock.seconds) == seconds  # uninstalled: later work is not counted
    finally:
        engine.close()


def test_writing_a_section_keeps_the_rest_of_the_file_and_replaces_only_itself(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Someone else's section\n\nkept\n")
    write_section(out, "cpu", "Engine", "first")
    write_section(out, "cpu", "Engine", "second")
    text = out.read_text()
    assert "Someone else's section" in text and "kept" in text
    assert text.count("<!-- engine-bench:cpu -->") == 1 and "second" in text and "first" not in text


def test_the_checkpoint_benchmark_writes_its_section(model_dir, tmp_path, capsys):
    from engine.bench.checkpoint import main as checkpoint_main

    out = tmp_path / "BENCHMARKS.md"
    args = ["--requests", "2", "--steps", "4", "--repeats", "1", "--model-dir", str(model_dir), "--output", str(out)]
    assert checkpoint_main(args) == 0
    text = out.read_text()
    assert text.count("<!-- engine-bench:checkpoint -->") == 1 and "## Checkpoint overhead (cpu, Wan)" in text
    assert re.search(r"^\| tiny Wan \| 1 \|", text, re.M) and re.search(r"^\| small Wan \| 1 \|", text, re.M), text


def test_the_long_video_benchmark_prints_one_line_per_figure_and_writes_its_section(model_dir, tmp_path, capsys):
    from engine.bench.long_video import main as long_video_main

    out = tmp_path / "BENCHMARKS.md"
    args = ["--models", "tiny-wan", "--multiples", "1,2", "--methods", "windows", "--steps", "2"]
    args += ["--demo-prompts", "1", "--demo-steps", "2", "--demo-frames", "33"]
    args += ["--model-dir", str(model_dir), "--output", str(out)]
    assert long_video_main(args) == 0
    printed = capsys.readouterr().out
    for multiple in (1, 2):
        row = rf"^long_video\[tiny-wan,windows,{multiple}x\]: \d+ frames, \d+\.\d+ s/video, peak RSS \d+ MB .*"
        assert re.search(row + r"\d+\.\d+ forwards/step, cost \d+\.\d+x of forwards x native \(load \d+\.\d\)$",
                         printed, re.M)  # fmt: skip
    for figure in ("per-window colour", "per-window shape", "per-window direction", "identity kept", "seam ratio"):
        assert re.search(rf"^demo_long\[vidserve-shapes,windows,33 frames,1 videos\]: {figure} ", printed, re.M)
    assert "<!-- engine-bench:long-video -->" in out.read_text()
