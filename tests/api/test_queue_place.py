"""Priority and place in the queue over the API: `priority` on submit (high needs the jobs:priority scope), and a
queued job's position and estimated start in the REST, OpenAI-shaped and SSE views, decreasing as jobs start.
Real Postgres and Redis; a worker's claims are made with the job store, as a worker makes them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.settings import Settings

MODEL = "tiny-wan"
MakeKey = Callable[..., Any]


def test_priority_high_needs_the_priority_scope(auth_client: FlaskClient, make_key: MakeKey) -> None:
    plain, trusted = make_key(), make_key("jobs:read", "jobs:write", "jobs:priority")
    body = {"prompt": "a heron", "priority": "high"}

    refused = auth_client.post("/v1/jobs", json=body, headers=plain.headers)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["field"] == "priority"
    accepted = auth_client.post("/v1/jobs", json=body, headers=trusted.headers)
    assert accepted.status_code == 202 and accepted.get_json()["priority"] == "high"
    assert auth_client.post("/v1/jobs", json={"prompt": "a heron"}, headers=plain.headers).get_json()["priority"] == (
        "normal"
    )


@pytest.mark.parametrize("value", ["urgent", "", 2, True])
def test_an_unknown_priority_is_a_422_naming_it(client: FlaskClient, value: object) -> None:
    response = client.post("/v1/jobs", json={"prompt": "a heron", "priority": value})
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "priority"


def test_position_and_estimate_are_present_and_decrease_as_jobs_start(
    client: FlaskClient, api_settings: Settings, no_jobs: None
) -> None:
    ids = [client.post("/v1/jobs", json={"prompt": f"a heron {i}", "model": MODEL}).get_json()["id"] for i in range(4)]
    store = JobStore(api_settings.database_url, lambda job: job_to_dict(job, None))
    last = ids[-1]

    def place() -> dict[str, Any]:
        rest = client.get(f"/v1/jobs/{last}").get_json()["queue"]
        assert client.get(f"/v1/videos/{last}").get_json()["queue"]["position"] == rest["position"]
        return rest

    seen = [place()]
    assert seen[0] == {"position": 3, "estimated_start_at": None}  # nothing started yet to estimate from
    for _ in range(2):
        job = store.claim_next([MODEL], "worker/1", 60)
        assert job is not None and str(job.id) != last
        seen.append(place())
    assert [p["position"] for p in seen] == [3, 2, 1]
    estimate = dt.datetime.fromisoformat(seen[-1]["estimated_start_at"])
    assert estimate > dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    # The event stream's first status event carries the place too.
    stream = client.get(f"/v1/jobs/{last}/events", buffered=False)
    first = next(e for e in _events(stream.response) if e["event"] == "status")
    stream.close()
    assert first["data"]["status"] == "queued" and first["data"]["queue"]["position"] == 1

    assert store.claim_next([MODEL], "worker/1", 60) is not None
    assert place()["position"] == 0
    assert str(store.claim_next([MODEL], "worker/1", 60).id) == last
    assert client.get(f"/v1/jobs/{last}").get_json()["queue"] is None  # running: no place in the queue


def _events(chunks: Any) -> Any:
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = [line for line in block.splitlines() if ": " in line and not line.startswith(":")]
            fields = dict(line.split(": ", 1) for line in lines)
            if "event" in fields:
                yield {"event": fields["event"], "data": json.loads(fields["data"])}


def test_the_lists_show_each_queued_jobs_place_from_a_constant_number_of_queries(
    client: FlaskClient, no_jobs: None
) -> None:
    ids = [client.post("/v1/jobs", json={"prompt": f"a crane {i}", "model": MODEL}).get_json()["id"] for i in range(6)]
    for path in ("/v1/jobs?limit={}", "/v1/videos?limit={}"):
        few, few_queries = _counting_statements(lambda path=path: client.get(path.format(2)).get_json()["data"])
        many, many_queries = _counting_statements(lambda path=path: client.get(path.format(6)).get_json()["data"])
        assert len(few) == 2 and len(many) == 6
        assert many_queries == few_queries, f"{path}: {few_queries} statements for 2 jobs, {many_queries} for 6"
        # One key, one priority: the queue's order is the order of submission.
        positions = {item["id"]: item["queue"]["position"] for item in many}
        assert positions == {job_id: place for place, job_id in enumerate(ids)}


def _counting_statements(call: Callable[[], Any]) -> tuple[Any, int]:
    """`call()`'s result and the number of SQL statements run meanwhile (the API runs in this process)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        result = call()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    return result, len(seen)
