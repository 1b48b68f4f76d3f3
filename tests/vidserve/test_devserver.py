"""`make run` (vidserve/tools/devserver.py) as a user runs it: a real process tree (gunicorn, worker, webhook sender,
local S3 server) started as a subprocess, then Ctrl-C (SIGINT) or `kill -9` of one of its children.

Promises: Ctrl-C stops the worker first, so a running job is handed back (`queued`) within the grace period
and the process exits 0; a child that dies is started again (a new pid, said on the console) while the rest
keeps serving.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from service_harness import (
    GATE_STEP,
    GATED_MODEL,
    SERVED_MODEL,
    free_port,
    isolated,
    new_gate,
    service_env,
    wait_until,
    write_gated_registry,
)
from sqlalchemy import text

from vidserve import db
from vidserve.settings import Settings
from vidserve.tools.devserver import WORKER_STOP_MARGIN
from worker.step_gate import StepGate

# Long enough for the short job's last step, its encoding and upload on a machine loaded many times over (0.7 s
# a step seen); the held job waits it out in full, so it is the Ctrl-C test's main cost.
GRACE_SECONDS = 10.0
READY_SECONDS = 300.0  # the first start under a loaded machine: gunicorn, a worker loading a model, weed
# A whole stack started, driven and stopped in one test: more than the suite's per-test limit on a busy machine.
pytestmark = pytest.mark.timeout(900)


class DevServer:
    """`python -m vidserve.tools.devserver` in a directory of its own (its var/), its console read line by line."""

    def __init__(self, settings: Settings, cwd: Path) -> None:
        self.settings = settings
        self.cwd = cwd
        self.lines: list[str] = []
        self.gate: StepGate | None = None  # set by the fixture: holds GATED_MODEL's jobs at its step
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vidserve.tools.devserver"],
            cwd=cwd,
            env=service_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # like a terminal's foreground job: only the supervisor gets the SIGINT
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.process.poll() is None or any(re.search(pattern, line) for line in self.lines), self.console
            return next((m for line in self.lines if (m := re.search(pattern, line))), None)

        return wait_until(found, timeout, interval=0.1, what=f"{pattern!r} on the console")

    @property
    def console(self) -> str:
        return "\n".join(self.lines)

    def pids(self) -> dict[str, int]:
        line = self.wait_line(r"pids +(.*)", READY_SECONDS).group(1)
        return {name: int(pid) for name, pid in (part.split() for part in line.split(", "))}

    def log(self, name: str) -> str:
        return (self.cwd / "var" / "log" / f"{name}.log").read_text(errors="replace")

    def submit(self, **fields: object) -> str:
        body = {"model": SERVED_MODEL, "num_frames": 9, "height": 32, "width": 32, **fields}
        response = requests.post(f"{self.settings.api_url}/v1/jobs", json=body, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def status(self, job_id: str) -> str:
        with db.get_engine(self.settings.database_url).connect() as conn:
            return conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()

    def progress(self, job_id: str) -> float:
        with db.get_engine(self.settings.database_url).connect() as conn:
            query = text("SELECT progress FROM jobs WHERE id = :id")
            return conn.execute(query, {"id": job_id}).scalar_one() or 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(GRACE_SECONDS + WORKER_STOP_MARGIN + 40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_devserver(settings: Settings, model_dir: Path, root: Path) -> DevServer:
    """`make run` in a fresh directory under `root`, with a database of its own, once it says it is ready."""
    cwd = root / f"devserver-{uuid.uuid4().hex[:6]}"
    cwd.mkdir()
    gate = new_gate(cwd)
    dev_settings = isolated(
        dataclasses.replace(settings, database_url=f"{settings.database_url}_dev_{uuid.uuid4().hex[:6]}"),
        host="127.0.0.1",
        port=free_port(),
        s3_endpoint="",  # make run starts its own S3 server, as on a fresh machine
        model_dir=str(model_dir),
        models_file=write_gated_registry(model_dir, gate),
        worker_models=f"{SERVED_MODEL},{GATED_MODEL}",
        worker_slots=2,
        shutdown_grace_seconds=GRACE_SECONDS,
    )
    server = DevServer(dev_settings, cwd)
    server.gate = gate
    try:
        server.wait_line("Ctrl-C stops everything", READY_SECONDS)
    except BaseException:
        server.stop()
        db.drop_database(dev_settings.database_url)
        raise
    return server


@pytest.fixture(scope="module")
def devservers(
    settings: Settings, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[DevServer]]:
    """The module's devservers: the tests share one while it runs (starting one costs 10-25 s); the Ctrl-C test
    ends it, so a test after that gets a new one."""
    servers: list[DevServer] = []
    yield servers
    for server in servers:
        server.stop()
        db.drop_database(server.settings.database_url)


@pytest.fixture
def devserver(
    devservers: list[DevServer], settings: Settings, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> DevServer:
    if not devservers or devservers[-1].process.poll() is not None:
        devservers.append(start_devserver(settings, model_dir, tmp_path_factory.mktemp("devserver")))
    return devservers[-1]


def test_a_child_killed_with_sigkill_is_restarted_and_the_stack_keeps_serving(devserver: DevServer) -> None:
    before = devserver.pids()

    for name in ("worker", "webhooks", "api"):
        os.kill(before[name], signal.SIGKILL)
        match = devserver.wait_line(rf"{name} restarted \(pid (\d+)", 60)
        assert int(match.group(1)) != before[name]
        assert re.search(rf"{name} \(pid {before[name]}\) exited with -9; restarting in", devserver.console)
        assert f"[vidserve] {name} restarted" in devserver.log(name)

    wait_until(lambda: devserver.log("worker").count(" ready.") >= 2, READY_SECONDS, interval=0.2, what="worker")

    def api_answers() -> bool:
        try:
            return requests.get(f"{devserver.settings.api_url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(api_answers, READY_SECONDS, interval=0.2, what="the restarted API")
    job = devserver.submit(prompt="a restarted worker's job", num_inference_steps=2)
    wait_until(lambda: devserver.status(job) == "succeeded", 120, interval=0.1, what="the job to succeed")
    assert devserver.process.poll() is None


def test_ctrl_c_lets_the_worker_finish_upload_and_hand_back_before_s3_stops(devserver: DevServer) -> None:
    # Both jobs wait at the step gate when Ctrl-C comes; the short one is released during the grace period (its
    # last step, and its video must still reach the local S3 server), the long one never, so the outcome does not
    # depend on speed. The module's last test: it ends the devserver the others share.
    steps = {"short": GATE_STEP + 1, "long": 8}
    short = devserver.submit(model=GATED_MODEL, prompt="a short walk", num_inference_steps=steps["short"])
    long = devserver.submit(model=GATED_MODEL, prompt="a long walk", num_inference_steps=steps["long"])
    for job_id, n in ((short, steps["short"]), (long, steps["long"])):
        wait_until(
            lambda job_id=job_id, n=n: (
                devserver.status(job_id) == "running" and round(devserver.progress(job_id) * n) == GATE_STEP
            ),
            400,
            interval=0.05,
            what=f"job {job_id} held at the gate",
        )

    asked = time.monotonic()
    devserver.process.send_signal(signal.SIGINT)
    devserver.gate.release(short)
    assert devserver.process.wait(GRACE_SECONDS + WORKER_STOP_MARGIN) == 0, devserver.console
    took = time.monotonic() - asked

    assert (devserver.status(short), devserver.status(long)) == ("succeeded", "queued"), devserver.log("worker")
    assert "handed back to the queue" in devserver.log("worker")
    assert took < GRACE_SECONDS + WORKER_STOP_MARGIN
    assert devserver.console.rstrip().endswith("stopped")
