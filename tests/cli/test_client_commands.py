"""`vidserve submit/extend/status/cancel/list`: the real command in a subprocess, talking to the public API only.

The commands get the API's URL from `VIDSERVE_API_URL` (or `--api`) and nothing else: no database URL, no
Redis, no S3 credentials in their environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_harness import GATED_JOB, GATED_MODEL, GATED_STEPS, SERVED_MODEL, Stack, held_at_gate, wait_until

from vidserve.settings import ENV_VARS
from vidserve.tools.client import VidserveClient
from worker.step_gate import StepGate
from worker.video import decode_mp4

REPO = Path(__file__).resolve().parents[2]


def vidserve(stack: Stack, *args: str, api_in_env: bool = True, **extra_env: str) -> subprocess.CompletedProcess[str]:
    # Only the public API's address: a client that reached for the database would fail here.
    env = {k: v for k, v in os.environ.items() if k not in {var for var, *_ in ENV_VARS}}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra_env)
    if api_in_env:
        env["VIDSERVE_API_URL"] = stack.api_url
    return subprocess.run(
        [sys.executable, "-m", "vidserve.tools.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_submit_wait_out_writes_the_video_and_shows_progress(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "video.mp4"
    done = vidserve(
        stack,
        "submit",
        "a lighthouse at dusk",
        "--model",
        SERVED_MODEL,
        "--size",
        "48x32",
        "--steps",
        "6",
        "--wait",
        "--out",
        str(out),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["params"]["num_inference_steps"] == 6
    assert decode_mp4(out.read_bytes()).shape == (9, 32, 48, 3)
    assert "100%" in done.stderr and f"wrote {out}" in done.stderr  # the progress bar reached the end

    status = vidserve(stack, "status", job["id"])
    assert status.returncode == 0 and job["id"] in status.stdout and "succeeded" in status.stdout

    listing = vidserve(stack, "list", "--status", "succeeded", "--limit", "100")
    assert listing.returncode == 0 and job["id"] in listing.stdout


def test_submit_without_wait_prints_the_id_and_cancel_cancels(stack: Stack, gated_jobs: StepGate) -> None:
    submitted = vidserve(
        stack,
        "submit",
        str(GATED_JOB["prompt"]),
        "--model",
        GATED_MODEL,
        "--steps",
        str(GATED_STEPS),
        "--api",
        stack.api_url,
        api_in_env=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    # It waits at the step gate (never released): still running when the cancel comes.
    wait_until(lambda: held_at_gate(stack.store, job_id, GATED_STEPS), 60, 0.1, "job running, held at the gate")
    canceled = vidserve(stack, "cancel", job_id, "--json")
    assert canceled.returncode == 0, canceled.stderr
    wait_until(lambda: stack.store.get(job_id).status.value == "canceled", 60, 0.1, "job canceled")
    again = vidserve(stack, "cancel", job_id)
    assert again.returncode == 1 and "409 job_conflict" in again.stderr


def test_extend_continues_a_finished_job_for_the_seconds_asked_and_writes_the_new_video(
    stack: Stack, tmp_path: Path
) -> None:
    first = vidserve(stack, "submit", "a red square moving right", "--model", SERVED_MODEL, "--steps", "2", "--wait")
    assert first.returncode == 0, first.stderr
    source_id = first.stdout.split()[0]
    out = tmp_path / "next.mp4"
    args = ("--prompt", "the square moves on", "--seconds", "2", "--steps", "2", "--wait", "--out", str(out), "--json")
    extended = vidserve(stack, "extend", source_id, *args)
    assert extended.returncode == 0, extended.stderr
    job = json.loads(extended.stdout)
    assert job["status"] == "succeeded" and job["params"]["extends"]["job_id"] == source_id
    # 2 s at the source's 8 fps: 16 frames, the nearest of the tiny Wan's 4k+1 is 17 (ties go to the longer).
    assert job["params"]["num_frames"] == 17 and job["params"]["prompt"] == "the square moves on"
    assert decode_mp4(out.read_bytes()).shape == (17, 32, 32, 3)  # the new frames only

    unfinished = vidserve(stack, "extend", "00000000-0000-0000-0000-000000000000", "--prompt", "x", "--frames", "9")
    assert unfinished.returncode == 1 and "404 job_not_found" in unfinished.stderr


def test_errors_are_readable_and_exit_nonzero(stack: Stack) -> None:
    bad = vidserve(stack, "submit", "x", "--model", "no-such-model")
    assert bad.returncode == 1 and "422 invalid_field" in bad.stderr and "model" in bad.stderr
    missing = vidserve(stack, "status", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "404 job_not_found" in missing.stderr
    # No retries: the default five wait 15 s in all before the same error (tests/faults ride an outage on them).
    unreachable = vidserve(stack, "list", "--api", "http://127.0.0.1:9", api_in_env=False, VIDSERVE_CLIENT_RETRIES="0")
    assert unreachable.returncode == 1 and "error:" in unreachable.stderr


def test_the_clients_retries_come_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def retries(client: VidserveClient) -> int:
        return client.http.get_adapter("http://127.0.0.1:9").max_retries.total

    monkeypatch.delenv("VIDSERVE_CLIENT_RETRIES", raising=False)
    assert retries(VidserveClient("http://127.0.0.1:9")) == 5
    monkeypatch.setenv("VIDSERVE_CLIENT_RETRIES", "0")
    assert retries(VidserveClient("http://127.0.0.1:9")) == 0
    assert retries(VidserveClient("http://127.0.0.1:9", retries=2)) == 2
    for bad in ("-1", "many", "²"):
        monkeypatch.setenv("VIDSERVE_CLIENT_RETRIES", bad)
        with pytest.raises(ValueError, match="VIDSERVE_CLIENT_RETRIES"):
            VidserveClient("http://127.0.0.1:9")
