"""The API as it runs in production: under gunicorn, over real HTTP, in a process that never imports torch.

The API pod must start in a second and stay small, so torch, diffusers and transformers must stay out.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gunicorn(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = _free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(GUNICORN), "--bind", f"127.0.0.1:{port}", "--workers", "2", "--timeout", "30", "api.wsgi:app"],
            cwd=REPO,
            env=api_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Two gunicorn workers importing the app: seconds on a quiet machine, more than 20 s under heavy load.
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if _request(("127.0.0.1", port), "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(10)


def _request(
    address: tuple[str, int], method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_gunicorn_serves_submit_then_get_over_http(gunicorn: tuple[str, int], broker) -> None:
    body = json.dumps({"model": "tiny-wan", "prompt": "a fox", "seed": 3}).encode()

    status, headers, raw = _request(gunicorn, "POST", "/v1/jobs", body, {"Content-Type": "application/json"})

    assert status == 202
    job = json.loads(raw)
    assert headers["Location"] == f"/v1/jobs/{job['id']}"
    status, _, raw = _request(gunicorn, "GET", headers["Location"])
    assert status == 200 and json.loads(raw)["params"]["seed"] == 3
    assert broker.find("gen.tiny-wan", job["id"]) == {"task": "worker.tasks.generate", "args": [job["id"], "tiny-wan"]}


def test_gunicorn_refuses_an_oversized_chunked_body_with_json_413(gunicorn: tuple[str, int], api_settings) -> None:
    # Chunked: no Content-Length to check up front, so the limit must hold while the body is read.
    chunks = iter([b'{"model": "tiny-wan", "prompt": "', b"x" * api_settings.max_body_bytes, b'"}'])

    conn = http.client.HTTPConnection(*gunicorn, timeout=10)
    try:
        conn.request("POST", "/v1/jobs", body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = conn.getresponse()
        status, raw = response.status, response.read()
    finally:
        conn.close()

    assert status == 413, raw
    assert json.loads(raw)["error"]["code"] == "body_too_large"


def _raw_exchange(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would, read gunicorn's whole answer (it closes the connection)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"NOT AN HTTP REQUEST LINE\r\n\r\n", 400, "bad_request"),
        (b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    ],
    ids=["request-line", "header-name", "uri-too-long", "header-too-large"],
)
def test_gunicorns_own_errors_are_in_the_json_error_shape(
    gunicorn: tuple[str, int], request_bytes: bytes, status: int, code: str
) -> None:
    got_status, headers, body = _raw_exchange(gunicorn, request_bytes)

    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]


def test_gunicorn_answers_openapi_and_readyz(gunicorn: tuple[str, int]) -> None:
    assert _request(gunicorn, "GET", "/readyz")[0] == 200
    status, _, raw = _request(gunicorn, "GET", "/openapi.json")
    assert status == 200 and json.loads(raw)["openapi"].startswith("3.1")


def test_the_api_process_never_imports_torch(api_env: dict[str, str]) -> None:
    probe = """
import sys
from api.wsgi import app
client = app.test_client()
assert client.get("/v1/models").status_code == 200
assert client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "a fox"}).status_code == 202
assert client.get("/openapi.json").status_code == 200
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "engine.engine") if m in sys.modules)
print("heavy modules:", heavy)
sys.exit(1 if heavy else 0)
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=api_env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stdout + result.stderr
