"""`vidserve keys create/list/revoke` (the real command in a subprocess, on the suite's database), and the client
commands' `--api-key` / `VIDSERVE_API_KEY` against a real API (gunicorn) with authentication on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_harness import isolated, start_api, write_test_registry
from sqlalchemy import text

from vidserve import db
from vidserve.keys import KeyStore
from vidserve.settings import ENV_VARS, Settings
from vidserve.tools.cli import main

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real `vidserve` command in a subprocess (seconds on a loaded machine: used once)."""
    return subprocess.run(
        [sys.executable, "-m", "vidserve.tools.cli", *args],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def vidserve(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`vidserve ARGS` in this process (its `main`), with `env` as the only VIDSERVE_* variables."""

    def _run(*args: str, env: dict[str, str]) -> Result:
        for var, *_ in ENV_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv("VIDSERVE_API_KEY", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = int(exit.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return _run


@pytest.fixture(scope="module")
def admin_env(settings: Settings) -> dict[str, str]:
    """What an operator's shell holds: the database URL (keys are managed on the server side)."""
    return {"VIDSERVE_DATABASE_URL": settings.database_url}


def test_create_prints_the_token_once_and_stores_only_its_hash(
    admin_env: dict[str, str], settings: Settings, vidserve: Callable[..., Result]
) -> None:
    created = run(
        "keys",
        "create",
        "--name",
        "ci bot",
        "--scope",
        "jobs:read",
        "--scope",
        "jobs:write",
        "--max-concurrent-jobs",
        "3",
        "--rate-limit-per-minute",
        "30",
        env={**os.environ, **admin_env},
    )

    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("vs_") and "\n" not in token  # stdout is the token alone, for scripts
    key = KeyStore(settings.database_url).verify(token)
    assert key is not None and key.name == "ci bot" and key.scopes == ["jobs:read", "jobs:write"]
    assert key.max_concurrent_jobs == 3 and key.rate_limit_per_minute == 30
    with db.get_engine(settings.database_url).connect() as conn:
        stored = conn.execute(text("SELECT string_agg(t::text, '') FROM api_keys t")).scalar_one()
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored

    listed = vidserve("keys", "list", env=admin_env)
    assert listed.returncode == 0 and "ci bot" in listed.stdout and token[:11] in listed.stdout
    assert token not in listed.stdout and token[11:] not in listed.stdout
    as_json = [json.loads(line) for line in vidserve("keys", "list", "--json", env=admin_env).stdout.splitlines()]
    mine = next(k for k in as_json if k["id"] == str(key.id))
    assert mine["prefix"] == token[:11] and mine["revoked_at"] is None and token not in json.dumps(as_json)


def test_revoke_by_prefix_or_id_stops_the_key(
    admin_env: dict[str, str], settings: Settings, vidserve: Callable[..., Result]
) -> None:
    by_prefix = vidserve("keys", "create", "--name", "a", "--scope", "jobs:read", env=admin_env).stdout.strip()
    by_id = vidserve("keys", "create", "--name", "b", "--scope", "admin", env=admin_env).stdout.strip()
    store = KeyStore(settings.database_url)
    b_id = str(store.verify(by_id).id)

    revoked = vidserve("keys", "revoke", by_prefix[:11], env=admin_env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout
    assert vidserve("keys", "revoke", b_id, env=admin_env).returncode == 0

    assert store.verify(by_prefix) is None and store.verify(by_id) is None
    listed = vidserve("keys", "list", "--json", env=admin_env).stdout.splitlines()
    assert all(json.loads(line)["revoked_at"] for line in listed if json.loads(line)["id"] == b_id)


def test_bad_input_is_refused(admin_env: dict[str, str], vidserve: Callable[..., Result]) -> None:
    no_scope = vidserve("keys", "create", "--name", "x", env=admin_env)
    bad_scope = vidserve("keys", "create", "--name", "x", "--scope", "jobs:everything", env=admin_env)
    unknown = vidserve("keys", "revoke", "vs_nosuchkey", env=admin_env)
    too_short = vidserve("keys", "revoke", "vs_", env=admin_env)

    assert no_scope.returncode == 2 and bad_scope.returncode == 2 and "invalid choice" in bad_scope.stderr
    assert unknown.returncode == 1 and "no key matches" in unknown.stderr
    assert too_short.returncode == 1


@pytest.fixture(scope="module")
def secured_api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API under gunicorn with authentication on (no worker: jobs stay queued)."""
    registry = write_test_registry(tmp_path_factory.mktemp("registry"))
    api, url = start_api(isolated(settings, auth="on", models_file=registry), tmp_path_factory.mktemp("api-logs"))
    yield url
    api.stop()


def _client_env(api_url: str, **extra: str) -> dict[str, str]:
    # Only the API's address (and key): the client commands never touch the database.
    return {"VIDSERVE_API_URL": api_url, **extra}


def test_client_commands_send_the_api_key(
    secured_api: str, settings: Settings, vidserve: Callable[..., Result]
) -> None:
    _key, token = KeyStore(settings.database_url).create("cli", ["jobs:read", "jobs:write"])

    refused = vidserve("list", env=_client_env(secured_api))
    submitted = vidserve("submit", "a harbour", "--model", "tiny-wan", "--api-key", token, env=_client_env(secured_api))
    job_id = submitted.stdout.strip()
    status = vidserve("status", job_id, env=_client_env(secured_api, VIDSERVE_API_KEY=token))
    canceled = vidserve("cancel", job_id, "--json", env=_client_env(secured_api, VIDSERVE_API_KEY=token))

    assert refused.returncode == 1 and "401 unauthorized" in refused.stderr
    assert submitted.returncode == 0, submitted.stderr
    assert status.returncode == 0 and job_id in status.stdout and "queued" in status.stdout
    assert canceled.returncode == 0 and json.loads(canceled.stdout)["status"] == "canceled"


def test_submit_with_an_idempotency_key_returns_the_first_job(
    secured_api: str, settings: Settings, vidserve: Callable[..., Result]
) -> None:
    _key, token = KeyStore(settings.database_url).create("cli-retry", ["jobs:read", "jobs:write"])
    env = _client_env(secured_api, VIDSERVE_API_KEY=token)

    first = vidserve("submit", "a dune", "--model", "tiny-wan", "--idempotency-key", "retry-1", env=env)
    again = vidserve("submit", "a dune", "--model", "tiny-wan", "--idempotency-key", "retry-1", env=env)

    assert first.returncode == again.returncode == 0, first.stderr
    assert first.stdout.strip() == again.stdout.strip()
