"""`GET /v1/jobs/{id}/events`: status and progress as Server-Sent Events, ending once the job is terminal.

A thread moves the job through claim → progress → success with the real `JobStore` (SQL) while the test
reads the stream from the app, the way a worker's writes reach a watching client.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from flask.testing import FlaskClient
from service_harness import wait_until

from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.settings import Settings


def read_events(
    client: FlaskClient, job_id: str, timeout: float = 30.0, events: list[tuple[str, dict[str, Any]]] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The stream's events until it ends, appended to `events` (when given) as they arrive."""
    response = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    events = [] if events is None else events
    buffer = ""
    deadline = time.monotonic() + timeout
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
            if "data" in fields:
                events.append((fields.get("event", "message"), json.loads(fields["data"])))
        assert time.monotonic() < deadline, "stream did not end"
    response.close()
    return events


def test_stream_reports_each_status_and_progress_change_then_the_whole_job(
    client: FlaskClient, submit: Any, api_settings: Settings
) -> None:
    store = JobStore(api_settings.database_url, lambda job: job_to_dict(job, None))
    job = submit()
    owner = f"sse-test/{uuid.uuid4().hex[:8]}"

    events: list[tuple[str, dict[str, Any]]] = []

    def streamed(status: str, progress: float) -> None:
        # The next change waits until the stream has sent this one: no change is missed however slow the poll.
        def sent() -> bool:
            return any((d["status"], d["progress"]) == (status, progress) for n, d in list(events) if n == "status")

        wait_until(sent, 30, interval=0.02, what=f"the stream to send {status} at {progress}")

    def worker() -> None:
        try:
            streamed("queued", 0.0)
            store.claim(job["id"], owner, 30)
            streamed("running", 0.0)
            for progress in (0.25, 0.5, 0.75):
                store.set_progress(job["id"], owner, progress)
                streamed("running", progress)
        finally:  # ends the stream even when a wait above failed
            store.succeed(job["id"], owner, {"key": "videos/none.mp4"}, {"steps_computed": 4})

    thread = threading.Thread(target=worker)
    thread.start()
    read_events(client, job["id"], events=events)
    thread.join()

    statuses = [(data["status"], data["progress"]) for name, data in events if name == "status"]
    assert statuses[0] == ("queued", 0.0)
    assert ("running", 0.5) in statuses and statuses[-1] == ("succeeded", 1.0)
    progress = [p for _, p in statuses]
    assert progress == sorted(progress), "progress never goes backwards"
    assert len(statuses) == len(set(statuses)), "only changes are sent"
    name, done = events[-1]
    assert name == "done" and done["id"] == job["id"] and done["status"] == "succeeded"
    assert done["stats"] == {"steps_computed": 4}


def test_stream_of_a_finished_job_ends_at_once(client: FlaskClient, submit: Any) -> None:
    job = submit()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    events = read_events(client, job["id"], timeout=5)
    assert [name for name, _ in events] == ["status", "done"]
    assert events[0][1]["status"] == "canceled"


def test_stream_of_an_unknown_job_is_a_json_404(client: FlaskClient) -> None:
    response = client.get(f"/v1/jobs/{uuid.uuid4()}/events")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "job_not_found"


def deliveries_of(api_settings: Settings, job_id: str) -> list[tuple[str, float]]:
    from sqlalchemy import text

    from vidserve.db import get_engine

    with get_engine(api_settings.database_url).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT event_type, (payload->'data'->>'progress')::float FROM webhook_deliveries"
                " WHERE job_id = :id ORDER BY created_at"
            ),
            {"id": job_id},
        ).all()
    return [(r[0], r[1]) for r in rows]


def test_progress_webhooks_only_for_jobs_that_ask_and_once_per_tenth(
    client: FlaskClient, submit: Any, api_settings: Settings
) -> None:
    store = JobStore(api_settings.database_url, lambda job: job_to_dict(job, None))
    hook = "https://hooks.example.com/progress"
    asked = submit(webhook_url=hook, webhook_events=["job.progress", "job.succeeded"])
    assert asked["webhook_events"] == ["job.progress", "job.succeeded"]
    plain = submit(webhook_url=hook)
    for job in (asked, plain):
        owner = f"progress-test/{uuid.uuid4().hex[:8]}"
        store.claim(job["id"], owner, 30)
        for progress in (0.05, 0.1, 0.12, 0.19, 0.25, 0.5, 0.55, 1.0):
            assert store.set_progress(job["id"], owner, progress) is False
        store.succeed(job["id"], owner, {"key": "videos/none.mp4"}, None)

    # Tenths crossed: 0.1, 0.2 (at 0.25), 0.5, 1.0; `job.running` was not asked for, so it is not sent.
    assert deliveries_of(api_settings, asked["id"]) == [
        ("job.progress", 0.1),
        ("job.progress", 0.25),
        ("job.progress", 0.5),
        ("job.progress", 1.0),
        ("job.succeeded", 1.0),
    ]
    assert [e for e, _ in deliveries_of(api_settings, plain["id"])] == ["job.running", "job.succeeded"]


def test_webhook_events_are_validated(client: FlaskClient) -> None:
    base = {"model": "tiny-wan", "prompt": "a cat", "webhook_url": "https://hooks.example.com/x"}
    for events, rule in (
        (["job.progres"], "must be a list of"),
        ("job.progress", "must be a JSON array"),
        (["job.progress", "job.progress"], "must not repeat"),
    ):
        response = client.post("/v1/jobs", json={**base, "webhook_events": events})
        assert response.status_code == 422 and rule in response.get_json()["error"]["rule"], events
    no_url = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "a cat", "webhook_events": ["job.progress"]})
    assert no_url.status_code == 422 and no_url.get_json()["error"]["rule"] == "needs a webhook_url"
