"""Test helpers shared by tests/worker and tests/e2e: a local webhook receiver and real service processes.

The processes are the real commands (`vidserve worker`, `vidserve webhooks`, `vidserve api`), started in
their own process groups against the suite's Postgres database, Redis DB and S3 bucket.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from vidserve.jobs import JobStore
from vidserve.queue import make_celery
from vidserve.settings import ENV_VARS, Settings
from vidserve.storage import VideoStore
from vidserve.tools.processes import ManagedProcess, vidserve_command
from worker.step_gate import StepGate

# The model the end-to-end workers serve; the other is registered but served by none (its jobs stay queued).
SERVED_MODEL = "tiny-wan"
UNSERVED_MODEL = "tiny-cogvideox"


@dataclass
class Stack:
    """A running API + worker + webhook sender, and direct handles on the stores they use; the worker serves
    SERVED_MODEL and GATED_MODEL, whose jobs wait at `gate`'s step until released."""

    settings: Settings
    api_url: str
    api: ManagedProcess
    worker: ManagedProcess
    webhooks: ManagedProcess
    store: JobStore
    videos: VideoStore
    gate: StepGate


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP(S) server on loopback that records every POST; `fail_first[path]` answers 500 that many times,
    `fail_each_first[path]` answers 500 to that many sends of each delivery (by `webhook-id`), `answers[path]` is a
    list of (status, headers) answered first, one per request."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    fail_first: dict[str, int] = field(default_factory=dict)
    fail_each_first: dict[str, int] = field(default_factory=dict)
    answers: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> WebhookReceiver:
        """Listen on `host`:`port` (0: a free port), speaking HTTPS with `tls` when given."""
        holder: dict[str, WebhookReceiver] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, headers = holder["r"]._answer(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        receiver = cls(server)
        holder["r"] = receiver
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return receiver

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        with self._lock:
            status, answer_headers = 200, {}
            if self.answers.get(path):
                status, answer_headers = self.answers[path].pop(0)
            elif self.fail_first.get(path, 0) > 0:
                self.fail_first[path] -= 1
                status = 500
            elif path in self.fail_each_first:
                delivery = {k.lower(): v for k, v in headers.items()}.get("webhook-id")
                sent = sum(r.path == path and r.headers.get("webhook-id") == delivery for r in self.received)
                status = 500 if sent < self.fail_each_first[path] else 200
            self.received.append(Received(path, {k.lower(): v for k, v in headers.items()}, body, time.time(), status))
            return status, answer_headers

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, predicate: Callable[[list[Received]], bool], timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if predicate(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"webhook receiver: condition not met at {path} within {timeout}s: {self.at(path)}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ManualClock:
    """A clock for code that takes one (`clock=`): it stands still until the test advances it, so a test of
    "not yet due" and "due now" never depends on how long the machine took in between."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class StubDNS:
    """Answers for chosen host names in place of DNS, for the webhook URL checks (vidserve.webhook_urls.resolve);
    every other name goes to the real resolver. `names[host]` is a list of addresses and may be changed later
    (what a DNS rebinding does)."""

    def __init__(self, monkeypatch: Any, names: dict[str, list[str]] | None = None) -> None:
        import ipaddress

        from vidserve import webhook_urls

        self.names = dict(names or {})
        self.asked: list[str] = []
        real = webhook_urls.resolve

        def resolve(hostname: str, port: int) -> list[Any]:
            self.asked.append(hostname)
            if hostname in self.names:
                return [ipaddress.ip_address(a) for a in self.names[hostname]]
            return real(hostname, port)

        monkeypatch.setattr(webhook_urls, "resolve", resolve)


# A registry for the tests: the two tiny models they use, Wan with long videos up to 161 frames (20 s at 8 fps)
# from its native window of 33. A test that needs a job still running uses GATED_MODEL (below), never a long one.
TEST_REGISTRY = """
[models.tiny-wan]
family = "wan"
path = "tiny/wan"
defaults = { num_frames = 9, height = 32, width = 32, num_inference_steps = 4, guidance_scale = 5.0, fps = 8 }
limits = { max_frames = 33, max_long_frames = 161, max_height = 128, max_width = 128, max_steps = 500 }

[models.tiny-cogvideox]
family = "cogvideox"
path = "tiny/cogvideox"
"""


def write_test_registry(model_dir: Path) -> str:
    path = model_dir / "test-models.toml"
    path.write_text(TEST_REGISTRY)
    return str(path)


# The tiny Wan whose jobs wait at step GATE_STEP until the test releases them (worker.step_gate): how a test
# catches a job mid-way without betting on the machine's speed.
GATED_MODEL = "tiny-wan-gated"
GATE_STEP = 2
# A job of GATED_MODEL: it runs to GATE_STEP of its GATED_STEPS and waits there until released or canceled.
GATED_STEPS = 8
GATED_JOB = {
    "model": GATED_MODEL,
    "prompt": "a long walk",
    "num_frames": 9,
    "height": 32,
    "width": 32,
    "num_inference_steps": GATED_STEPS,
}


def write_gated_registry(model_dir: Path, gate: StepGate, name: str = "gated-models.toml") -> str:
    """The test registry plus GATED_MODEL held by `gate`, written under the gate's release directory's parent
    (one file per test); model paths still resolve against `model_dir`."""
    entry = f"""
[models.{GATED_MODEL}]
family = "wan"
path = "tiny/wan"
defaults = {{ num_frames = 9, height = 32, width = 32, num_inference_steps = 4, guidance_scale = 5.0, fps = 8 }}
limits = {{ max_frames = 33, max_long_frames = 161, max_height = 128, max_width = 128, max_steps = 50 }}
options = {{ step_gate = {{ at_step = {gate.at_step}, release_dir = "{gate.release_dir}" }} }}
"""
    gate.release_dir.mkdir(parents=True, exist_ok=True)
    path = gate.release_dir.parent / name
    path.write_text(TEST_REGISTRY + entry)
    return str(path)


def new_gate(root: Path) -> StepGate:
    """A gate at GATE_STEP whose release files live in a fresh directory under `root`."""
    return StepGate(GATE_STEP, root / f"gate-{time.time_ns()}")


def held_at_gate(store: JobStore, job_id: str, num_steps: int, gate_step: int = GATE_STEP) -> bool:
    """Whether the job is running with the progress of the gate's step written in Postgres: it waits there."""
    job = store.get(job_id)
    return job.status.value == "running" and round(job.progress * num_steps) == gate_step


def isolated(settings: Settings, **changes: Any) -> Settings:
    """`settings` with Redis keys prefixed by this run's database name: queues of their own, even when
    another test run (or another checkout's) shares the same Redis DB index."""
    from sqlalchemy.engine import make_url

    return dataclasses.replace(settings, redis_prefix=f"{make_url(settings.database_url).database}:", **changes)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var, attr, _default, _ in ENV_VARS:
        env[var] = str(getattr(settings, attr))
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_celery_service(
    command: str, settings: Settings, log_dir: Path, timeout: float = 120.0, **extra_env: str
) -> ManagedProcess:
    """Start `vidserve worker` or `vidserve webhooks` and wait until its Celery node answers a ping."""
    proc = ManagedProcess(
        command,
        vidserve_command(command),
        env=service_env(settings, **extra_env),
        log_path=log_dir / f"{command}-{time.time_ns()}.log",
        cwd=Path(__file__).resolve().parents[1],
    )
    prefix = "gen" if command == "worker" else "webhooks"
    node = f"{prefix}-{proc.pid}@{socket.gethostname()}"
    app = make_celery(settings)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{command} exited early:\n{proc.log_tail()}")
            replies = app.control.ping(destination=[node], timeout=0.5)
            if replies:
                return proc
        raise RuntimeError(f"{command} did not answer a ping within {timeout}s:\n{proc.log_tail()}")
    except BaseException:
        proc.stop()
        raise
    finally:
        app.close()


def start_api(settings: Settings, log_dir: Path, timeout: float = 60.0) -> tuple[ManagedProcess, str]:
    """`vidserve api` (gunicorn) on a free port; returns the process and its base URL."""
    import requests

    port = free_port()
    proc = ManagedProcess(
        "api",
        vidserve_command("api", "--port", str(port), "--workers", "1"),
        env=service_env(settings),
        log_path=log_dir / f"api-{port}.log",
        cwd=Path(__file__).resolve().parents[1],
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"api exited early:\n{proc.log_tail()}")
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"api did not answer within {timeout}s:\n{proc.log_tail()}")


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def require(available: bool, what: str) -> None:
    """Skip the test (saying why) when `what` is missing here; under CI (`VIDSERVE_REQUIRE_ALL=1`, set by .ci/run)
    fail it instead, so a binary or browser that could not be installed never passes CI by silently skipping."""
    if available:
        return
    if os.environ.get("VIDSERVE_REQUIRE_ALL") == "1":
        pytest.fail(f"{what} (VIDSERVE_REQUIRE_ALL=1: required here)", pytrace=False)
    pytest.skip(what)


def queued_messages(settings: Settings, queue: str) -> list[tuple[str, list[str]]]:
    """(task name, args) of every message waiting in a Celery queue on Redis."""
    client = redis.Redis.from_url(settings.redis_url)
    messages = []
    for raw in client.lrange(settings.redis_prefix + queue, 0, -1):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append((envelope["headers"]["task"], args))
    return messages
