"""Private, breakable services for the fault-injection suite: a Redis, a Postgres cluster and an S3 server of
its own, each restartable on the same port and data directory, plus an API and workers as real processes.

The machine's shared Redis (6379) and Postgres (5432) are never touched: other sessions use them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from service_harness import (
    GATE_STEP,
    GATED_MODEL,
    free_port,
    held_at_gate,
    require,
    start_api,
    start_celery_service,
    wait_until,
)

from vidserve import db
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.settings import Settings
from vidserve.storage import VideoStore
from vidserve.tools.processes import ManagedProcess
from vidserve.tools.s3server import S3Server, free_port_block, start_s3_server
from worker.step_gate import StepGate

MODEL = "tiny-wan"
POISON_MODEL = "tiny-wan-poison"
# A prompt whose characters lie outside the poisoned text encoder's vocabulary (see `poison_model`).
POISON_PROMPT = "zzz quux"
TERMINAL = {"succeeded", "failed", "canceled"}

REGISTRY = """
[models.tiny-wan]
family = "wan"
path = "tiny/wan"
defaults = { num_frames = 9, height = 32, width = 32, num_inference_steps = 4, guidance_scale = 5.0, fps = 8 }
limits = { max_frames = 33, max_height = 128, max_width = 128, max_steps = 50 }

[models.tiny-wan-poison]
family = "wan"
path = "tiny/wan-poison"
defaults = { num_frames = 9, height = 32, width = 32, num_inference_steps = 4, guidance_scale = 5.0, fps = 8 }
limits = { max_frames = 33, max_height = 128, max_width = 128, max_steps = 50 }
"""
# The tiny Wan whose jobs wait at GATE_STEP until the test releases them: how a fault lands mid-job whatever the
# machine's speed. Served only by the workers a test starts with `gated_settings`.
GATED_REGISTRY = """
[models.tiny-wan-gated]
family = "wan"
path = "tiny/wan"
defaults = {{ num_frames = 9, height = 32, width = 32, num_inference_steps = 8, guidance_scale = 5.0, fps = 8 }}
limits = {{ max_frames = 33, max_height = 128, max_width = 128, max_steps = 50 }}
options = {{ step_gate = {{ at_step = {at_step}, release_dir = "{release_dir}" }} }}
"""


def _pg_bin(name: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    require(bool(found), f"no Postgres binaries ({name}) on this machine")
    return found[-1]


class PrivatePostgres:
    """A throwaway cluster owned by the `postgres` user (initdb refuses root), on a free port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
        self._as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """redis-server without persistence: a restart loses every message, as a crashed broker does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: ManagedProcess | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = ManagedProcess("redis", args + ["--dir", str(self.root)], log_path=self.root / "redis.log")
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), 10, what="private redis")

    def kill(self) -> None:
        assert self.process is not None
        self.process._signal_group(9)  # SIGKILL: no save, no goodbye
        self.process.process.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class RestartableS3:
    data_dir: Path
    base_port: int
    server: S3Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base_port}"

    def start(self) -> None:
        self.server = start_s3_server(self.data_dir, "faults", "faults-secret", base_port=self.base_port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class Services:
    postgres: PrivatePostgres
    redis: PrivateRedis
    s3: RestartableS3
    settings: Settings
    logs: Path
    gate: StepGate
    api_url: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)
    api: ManagedProcess | None = None

    @property
    def store(self) -> JobStore:
        return JobStore(self.settings.database_url, lambda job: job_to_dict(job, None))

    @property
    def videos(self) -> VideoStore:
        return VideoStore(self.settings)


def poison_model(model_dir: Path) -> None:
    """A copy of tiny Wan whose text encoder knows only the first words of its tokenizer's vocabulary.

    A corrupt checkpoint of a kind seen in practice (tokenizer and encoder out of step): loading works and
    prompts of known words generate, but any other prompt raises inside the engine every time.
    """
    from safetensors.torch import load_file, save_file

    from engine.tiny import _WORDS

    dst = model_dir / "tiny" / "wan-poison"
    shutil.copytree(model_dir / "tiny" / "wan", dst)
    encoder = dst / "text_encoder"
    keep = 4 + len(_WORDS)  # special pieces, then the whole words; single letters come after
    weights = load_file(encoder / "model.safetensors")
    weights = {
        k: (v[:keep].contiguous() if k in ("shared.weight", "encoder.embed_tokens.weight") else v)
        for k, v in weights.items()
    }
    save_file(weights, encoder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((encoder / "config.json").read_text())
    config["vocab_size"] = keep
    (encoder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="session")
def faults(model_dir: Path, webhook_secret: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="vidserve-faults-pg-")))
    rds: PrivateRedis | None = None
    s3 = RestartableS3(tmp_path_factory.mktemp("faults-s3"), free_port_block())
    api: ManagedProcess | None = None
    try:
        rds = PrivateRedis(tmp_path_factory.mktemp("faults-redis"))
        s3.start()
        database_url = f"{pg.url}/vidserve_faults"
        db.create_database(database_url)
        db.upgrade(database_url)
        if not (model_dir / "tiny" / "wan-poison").exists():
            poison_model(model_dir)
        gate = StepGate(GATE_STEP, tmp_path_factory.mktemp("faults-gate"))
        registry = model_dir / "faults-models.toml"
        registry.write_text(REGISTRY + GATED_REGISTRY.format(at_step=gate.at_step, release_dir=gate.release_dir))
        settings = Settings(
            database_url=database_url,
            redis_url=rds.url,
            s3_endpoint=s3.endpoint,
            s3_access_key="faults",
            s3_secret_key="faults-secret",
            s3_bucket="vidserve-faults",
            webhook_secret=webhook_secret,
            webhook_retry_scale=0.01,
            # The suite's webhook receivers listen on loopback, which production settings refuse.
            webhook_allowed_networks="127.0.0.0/8,::1/128",
            auth="off",  # the fault tests' clients carry no API key
            model_dir=str(model_dir),
            models_file=str(registry),
            worker_models=MODEL,
            worker_slots=4,
            lease_seconds=4,
            sweep_seconds=1,
            max_attempts=3,
        )
        VideoStore(settings).ensure_bucket()
        logs = tmp_path_factory.mktemp("faults-logs")
        api, api_url = start_api(settings, logs)
        yield Services(pg, rds, s3, settings, logs, gate, api_url, api=api)
    finally:
        if api is not None:
            api.stop()
        if rds is not None and rds.process is not None:
            rds.process.stop()
        s3.stop()
        db.get_engine.cache_clear()
        db.session_factory.cache_clear()
        pg.destroy()


@pytest.fixture
def processes(faults: Services) -> Iterator[list[ManagedProcess]]:
    """Workers a test starts; whatever is left is stopped (SIGTERM, then SIGKILL) at its end."""
    started: list[ManagedProcess] = []
    yield started
    # What a test leaves unfinished (a job still held at the gate, handed back, queued) must not take the next
    # test's worker slots: cancel it before the workers stop (they see the flag) and once more after.
    _cancel_unfinished(faults.store)
    for proc in started:
        proc.terminate()
    for proc in started:
        proc.stop(timeout=30)
    _cancel_unfinished(faults.store)


def _cancel_unfinished(store: JobStore) -> None:
    for status in ("queued", "running"):
        for row in store.list(status=status, limit=500):
            store.cancel(row.id)


def start_worker(
    faults: Services, processes: list[ManagedProcess], settings: Settings | None = None, **env: str
) -> ManagedProcess:
    for tries_left in (1, 0):
        try:
            proc = start_celery_service("worker", settings or faults.settings, faults.logs, **env)
            break
        except redis.ConnectionError:
            # The test process's ping, not the worker: after a Redis restart it can read from a dead connection.
            if not tries_left:
                raise
    processes.append(proc)
    return proc


def gated_settings(faults: Services, **changes: Any) -> Settings:
    """The suite's worker settings, serving the gated model too (and `changes`)."""
    return dataclasses.replace(faults.settings, worker_models=f"{MODEL},{GATED_MODEL}", **changes)


def wait_held(faults: Services, job_ids: list[str], num_steps: int, timeout: float = 120.0) -> None:
    """Until every gated job waits at the gate, its progress there written in Postgres."""
    store = faults.store
    wait_until(
        lambda: all(held_at_gate(store, j, num_steps) for j in job_ids),
        timeout,
        interval=0.05,
        what=f"{len(job_ids)} jobs to wait at the gate",
    )


def submit(faults: Services, **body: Any) -> str:
    response = requests.post(f"{faults.api_url}/v1/jobs", json={"model": MODEL, **body}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job(faults: Services, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{faults.api_url}/v1/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_terminal(faults: Services, job_ids: list[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    """Every job's final JSON, read from the API once all are terminal."""
    store = faults.store
    wait_until(
        lambda: all(store.get(j).status.terminal for j in job_ids),
        timeout,
        interval=0.2,
        what=f"{len(job_ids)} jobs to end",
    )
    return {j: job(faults, j) for j in job_ids}


def wait_running(faults: Services, job_ids: list[str], timeout: float = 120.0) -> None:
    """Until each job has been seen running with some progress (not necessarily all at the same instant)."""
    store, seen = faults.store, set()

    def all_seen() -> bool:
        for job_id in set(job_ids) - seen:
            row = store.get(job_id)
            if row.status.value == "running" and row.progress > 0:
                seen.add(job_id)
        return seen == set(job_ids)

    wait_until(all_seen, timeout, interval=0.05, what=f"{len(job_ids)} jobs to run")


def event_types(faults: Services, job_id: str) -> list[str]:
    return [e.type for e in faults.store.events(job_id)]
