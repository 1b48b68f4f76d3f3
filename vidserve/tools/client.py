"""A small HTTP client of vidserve's public REST API (`/v1/jobs...`), used by the CLI and usable from scripts.

It speaks only the public API: submit, read, list, cancel, follow progress (Server-Sent Events, falling back
to polling) and download the finished video from its presigned URL.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

DEFAULT_API_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
# Requests the server did not take or could not serve just now (connection refused or reset, 502/503/504 from a
# restarting API or database) are retried, by default 5 times waiting 0, 1, 2, 4, 8 s or the server's Retry-After
# (`retries=` or $VIDSERVE_CLIENT_RETRIES sets how many). Retrying a submit is safe: it always carries an
# Idempotency-Key, so the server makes one job however often it arrives.
DEFAULT_RETRIES = 5


def _retry_policy(retries: int) -> Retry:
    return Retry(
        total=retries,
        backoff_factor=0.5,
        status_forcelist=(502, 503, 504),
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def retries_from_env() -> int:
    """$VIDSERVE_CLIENT_RETRIES, or DEFAULT_RETRIES when unset; ValueError naming the variable when malformed."""
    raw = os.environ.get("VIDSERVE_CLIENT_RETRIES", "")
    if not raw:
        return DEFAULT_RETRIES
    if not raw.isdecimal() or not raw.isascii():
        raise ValueError(f"VIDSERVE_CLIENT_RETRIES must be a whole number of 0 or more, got {raw!r}")
    return int(raw)


class ApiError(Exception):
    """The API answered an error: `status` is the HTTP status, `code`/`message` its JSON error."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field


def api_url_from_env(explicit: str | None = None) -> str:
    return (explicit or os.environ.get("VIDSERVE_API_URL") or DEFAULT_API_URL).rstrip("/")


class VidserveClient:
    def __init__(
        self,
        base_url: str | None = None,
        timeout: float = 30.0,
        api_key: str | None = None,
        retries: int | None = None,
    ) -> None:
        """`api_key` (default: $VIDSERVE_API_KEY) is sent as a bearer token; none is needed with auth off.
        `retries` (default: $VIDSERVE_CLIENT_RETRIES, else 5) is how often a refused or 502/503/504 request is
        tried again."""
        self.base_url = api_url_from_env(base_url)
        self.timeout = timeout
        self.http = requests.Session()
        adapter = HTTPAdapter(max_retries=_retry_policy(retries_from_env() if retries is None else retries))
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        api_key = api_key or os.environ.get("VIDSERVE_API_KEY")
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    # ---- jobs ----------------------------------------------------------------------------------
    def submit(
        self, model: str | None, prompt: str, idempotency_key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """POST /v1/jobs; `model` None: the server's default model; `fields` are the optional job fields (num_frames,
        height, width, seed, ...).

        The request carries `idempotency_key` (default: a new random one), so this client's own retries, and
        yours with the same key, return the first job instead of making another.
        """
        body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        if model is not None:
            body["model"] = model
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def extend(self, job_id: str, prompt: str, idempotency_key: str | None = None, **fields: Any) -> dict[str, Any]:
        """POST /v1/jobs/{id}/extend: a new job continuing a succeeded one from its kept final latents; `fields` are
        the optional ones (num_frames, include_original, seed, ...). Idempotent like `submit`."""
        body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._json("POST", f"/v1/jobs/{job_id}/extend", json=body, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def models(self) -> list[dict[str, Any]]:
        """GET /v1/models: each model's name, family, limits (frame rule, windows) and defaults."""
        return self._json("GET", "/v1/models")["data"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def list(
        self, status: str | None = None, model: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "model": model, "limit": limit, "cursor": cursor}.items() if v}
        return self._json("GET", "/v1/jobs", params=params)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) pairs of the job's Server-Sent Events stream, until it ends."""
        with self.http.get(
            f"{self.base_url}/v1/jobs/{job_id}/events", stream=True, timeout=(self.timeout, 60.0)
        ) as response:
            _raise_for(response)
            event, data = "message", []
            for line in response.iter_lines(decode_unicode=True):
                if line is None:
                    continue
                if line == "":
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    def wait(
        self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Block until the job is terminal, calling `on_update` with each status/progress change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event, data in self.events(job_id):
                if on_update and event == "status":
                    on_update(data)
                if event == "done":
                    return data
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not finished after {timeout}s")
        except requests.RequestException:
            pass  # a proxy that cuts streams: fall back to polling
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout}s")
            time.sleep(0.5)

    def download(self, job: dict[str, Any], path: str) -> int:
        """Write a succeeded job's video to `path` (from its presigned URL, fetched fresh); returns the bytes."""
        if job.get("status") != "succeeded":
            raise ApiError(409, "job_not_succeeded", f"job is {job.get('status')}")
        url = self.get(job["id"])["output"]["url"]
        written = 0
        with self.http.get(url, stream=True, timeout=self.timeout) as response:
            response.raise_for_status()
            with open(path, "wb") as out:
                for chunk in response.iter_content(1 << 16):
                    out.write(chunk)
                    written += len(chunk)
        return written

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        _raise_for(response)
        return response.json()


def _raise_for(response: requests.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, error.get("code", "error"), error.get("message", ""), error.get("field"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "http_error", response.text[:500]) from None
