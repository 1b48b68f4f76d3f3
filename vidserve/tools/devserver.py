"""`make run`: the whole service on one machine, in the foreground, from a fresh clone.

Creates and migrates the database, builds the tiny models when missing, starts a local S3 server unless
VIDSERVE_S3_ENDPOINT names one, keeps a webhook secret in var/, then runs the API (gunicorn), one
generation worker serving every registered model and the webhook sender, with authentication off unless
VIDSERVE_AUTH is set (and a banner saying so). A child that dies is started again after a back-off. Ctrl-C or
SIGTERM stops exactly what it started: the worker first (it hands its running jobs back), the S3 server last.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from vidserve import db
from vidserve.settings import ENV_VARS, Settings
from vidserve.tools.processes import ManagedProcess, RestartingProcess, vidserve_command
from vidserve.tools.s3server import S3Server, port_block_free, port_free, start_s3_server

VAR = Path("var")
# weed mini's block of 12 ports; fixed so presigned URLs stay stable across restarts, away from the
# suite's random 20000-60000 and from weed's own defaults (8080, 8888, 9333).
S3_BASE_PORTS = (8333, 18333, 28333)
READY_TIMEOUT = 180.0
# `make run` is local: webhooks to a receiver on this machine are allowed (unless the variable is set).
LOCAL_WEBHOOK_NETWORKS = "127.0.0.0/8,::1/128"
# The long-running children, by their `vidserve` command.
CHILDREN = ("api", "worker", "webhooks")
# Past its shutdown grace period, the time a worker may take to hand its jobs back before it is killed.
WORKER_STOP_MARGIN = 20.0


class Stop(Exception):
    pass


def _say(message: str) -> None:
    print(f"[vidserve] {message}", flush=True)


def _webhook_secret() -> str:
    path = VAR / "webhook_secret"
    if path.exists():
        return path.read_text().strip()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def _start_s3(settings: Settings) -> S3Server:
    for base in S3_BASE_PORTS:
        if port_block_free(base):
            return start_s3_server(VAR / "s3", settings.s3_access_key, settings.s3_secret_key, base_port=base)
    raise RuntimeError(f"no free port block for the local S3 server (tried {S3_BASE_PORTS})")


def _missing_models(settings: Settings) -> list[str]:
    from engine.registry import ModelRegistry

    registry = ModelRegistry.from_file(settings.models_file or None, settings.model_dir)
    tiny_root = (Path(settings.model_dir) / "tiny").resolve()
    return [
        spec.name
        for spec in registry
        if Path(spec.path).resolve().is_relative_to(tiny_root) and not (Path(spec.path) / "model_index.json").exists()
    ]


def local_auth(env: Mapping[str, str]) -> str:
    """`make run` is for one machine: authentication is off unless VIDSERVE_AUTH says otherwise."""
    return env.get("VIDSERVE_AUTH") or "off"


def auth_banner(settings: Settings) -> list[str]:
    """The lines `make run` prints about authentication; with it off, loud enough not to be missed."""
    if settings.auth_enabled:
        return [
            "auth     on: every /v1 call needs Authorization: Bearer <key>; make one with",
            "         .venv/bin/vidserve keys create --name me --scope jobs:read --scope jobs:write",
        ]
    rule = "!" * 78
    return [
        rule,
        "AUTHENTICATION IS OFF (local use): anyone who reaches the API sees, submits and cancels every job.",
        "Turn it on with VIDSERVE_AUTH=on make run, then: .venv/bin/vidserve keys create --name me "
        "--scope jobs:read --scope jobs:write",
        rule,
    ]


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for var, attr, _default, _ in ENV_VARS:
        env[var] = str(getattr(settings, attr))
    env.setdefault("HF_HUB_OFFLINE", "1")  # the tiny models are local; never reach for a hub
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _wait_http(url: str, proc: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s")


def _wait_log(proc: ManagedProcess, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}")
        if needle in proc.log_tail(200_000):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} was not ready within {timeout:.0f}s; see {proc.log_path}")


def main() -> int:
    VAR.mkdir(exist_ok=True)
    logs = VAR / "log"
    logs.mkdir(exist_ok=True)
    settings = Settings.from_env()
    overrides: dict[str, object] = {"model_dir": str(Path(settings.model_dir).resolve())}
    started: list[ManagedProcess] = []
    children: dict[str, RestartingProcess] = {}
    s3: S3Server | None = None

    def on_signal(signum: int, _frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not port_free(settings.port) and settings.host in ("127.0.0.1", "0.0.0.0", "localhost"):
            raise RuntimeError(f"port {settings.port} is taken; set VIDSERVE_PORT to another port")
        _say(f"database {settings.database_url.rsplit('/', 1)[-1]}: creating if missing, migrating")
        db.create_database(settings.database_url)
        db.upgrade(settings.database_url)

        overrides["auth"] = local_auth(os.environ)
        if not settings.webhook_secret:
            overrides["webhook_secret"] = _webhook_secret()
        if not settings.webhook_allowed_networks:
            overrides["webhook_allowed_networks"] = LOCAL_WEBHOOK_NETWORKS
            _say(f"webhooks may go to loopback ({LOCAL_WEBHOOK_NETWORKS}) for local receivers, unlike in production")
        if not settings.s3_endpoint:
            s3 = _start_s3(settings)
            overrides["s3_endpoint"] = s3.endpoint
            _say(f"local S3 server (SeaweedFS) at {s3.endpoint}, data in {VAR / 's3'}")
        settings = Settings.from_env(**overrides)
        env = _child_env(settings)

        missing = _missing_models(settings)
        if missing:
            _say(f"building tiny models ({', '.join(missing)}) into {settings.model_dir}/tiny ...")
            builder = ManagedProcess(
                "build-tiny", vidserve_command("models", "build-tiny"), env=env, log_path=logs / "models.log"
            )
            started.append(builder)
            if builder.process.wait() != 0:
                raise RuntimeError(f"building the tiny models failed:\n{builder.log_tail()}")
            started.remove(builder)

        from vidserve.storage import VideoStore

        VideoStore(settings).ensure_bucket()

        for name in CHILDREN:
            # Readiness is read from these logs: a previous run's lines must not count.
            log = logs / f"{name}.log"
            if log.exists():
                log.replace(logs / f"{name}.log.1")
        for name in CHILDREN:
            children[name] = RestartingProcess(name, vidserve_command(name), env, logs / f"{name}.log", _say)

        # A child that dies while starting is a configuration problem: stop and say why, no restart loop.
        _wait_http(f"http://{settings.host}:{settings.port}/healthz", children["api"].current, READY_TIMEOUT)
        _wait_log(children["worker"].current, " ready.", READY_TIMEOUT)
        _wait_log(children["webhooks"].current, " ready.", READY_TIMEOUT)

        from engine.registry import ModelRegistry

        registry = ModelRegistry.from_file(settings.models_file or None, settings.model_dir)
        _say(f"API      {settings.api_url}   (OpenAPI: {settings.api_url}/openapi.json)")
        names = [s.name if Path(s.path).exists() else f"{s.name} (no weights at {s.path})" for s in registry]
        _say(f"models   {', '.join(names)}; default {registry.default}")
        _say(f"logs     {logs}/  (api.log, worker.log, webhooks.log)")
        _say("pids     " + ", ".join(f"{name} {child.pid}" for name, child in children.items()))
        for line in auth_banner(settings):
            _say(line)
        bearer = "" if not settings.auth_enabled else '-H "Authorization: Bearer $VIDSERVE_API_KEY" '
        _say(
            f"try      curl -s -X POST {settings.api_url}/v1/jobs -H 'content-type: application/json' {bearer}"
            """-d '{"prompt": "a blue circle moving up"}'"""
        )
        _say("Ctrl-C stops everything; a process that dies is started again")
        while True:
            for child in children.values():
                child.tend()
            time.sleep(0.2)
    except Stop as stop:
        _say(f"{stop}: stopping")
        return 0
    except Exception as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        # Ignore further Ctrl-C while stopping, so a second press cannot orphan a child mid-way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in started:
            proc.stop(timeout=20.0)
        _stop_in_order(children, s3, settings.shutdown_grace_seconds)
        if started or children or s3 is not None:
            _say("stopped")


def _stop_in_order(children: dict[str, RestartingProcess], s3: S3Server | None, grace_seconds: float) -> None:
    """The worker first: it hands its running jobs back, which needs the database and the S3 server (for their
    checkpoints) still up; then the API and the webhook sender, which delivers the events of that hand-back;
    the S3 server last."""
    worker = children.get("worker")
    if worker is not None:
        worker.stop(timeout=grace_seconds + WORKER_STOP_MARGIN)
    rest = [child for name, child in children.items() if name != "worker"]
    for child in rest:
        child.current.terminate()
    for child in rest:
        child.stop(timeout=20.0)
    if s3 is not None:
        s3.stop()


if __name__ == "__main__":
    sys.exit(main())
