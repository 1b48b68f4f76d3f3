"""The benchmark runs end to end and reports in the agreed format (speed is reported, never asserted)."""

from __future__ import annotations

import re

from engine.bench.__main__ import main
from engine.bench.report import write_section


def test_the_benchmark_prints_a_ratio_line_per_size_and_writes_its_section_and_chart(model_dir, tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    args = ["--sizes", "tiny", "--families", "wan", "--requests", "4", "--repeats", "1", "--demo", "off"]
    assert main([*args, "--model-dir", str(model_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^throughput_vs_diffusers\[tiny\]: \d+\.\d+x$", printed, re.M)
    assert re.search(r"^throughput_vs_diffusers\[tiny,cached\]: \d+\.\d+x at \d+\.\d dB$", printed, re.M)
    text = out.read_text()
    assert "| tiny | wan | staggered | engine |" in text
    assert "<!-- engine-bench:cpu-cached -->" in text and "| tiny | wan | engine | first_block 0.2 (default) |" in text
    assert (tmp_path / "benchmarks-cpu.png").stat().st_size > 0


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
