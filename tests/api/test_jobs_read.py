"""GET /v1/jobs/{id} and GET /v1/jobs: one job, or pages of jobs newest first with filters and a cursor.

An unknown or malformed id is a JSON 404; a bad filter value is a 422 naming the parameter.
"""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient

from vidserve.jobs import JobStore
from vidserve.settings import Settings


def test_get_returns_the_submitted_job(client: FlaskClient, submit) -> None:
    job = submit(seed=7, metadata={"k": "v"})

    response = client.get(f"/v1/jobs/{job['id']}")

    assert response.status_code == 200
    got = response.get_json()
    # The queue place is live (its estimate moves with the clock); the rest is the job as submitted.
    assert got["queue"]["position"] == job["queue"]["position"]
    assert {k: v for k, v in got.items() if k != "queue"} == {k: v for k, v in job.items() if k != "queue"}


@pytest.mark.parametrize(
    "job_id", [str(uuid.uuid4()), "not-a-uuid", "1234", "%00"], ids=["unknown", "malformed", "number", "nul"]
)
def test_get_of_an_unknown_or_malformed_id_is_a_json_404(client: FlaskClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}")

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "job_not_found"


def test_list_returns_jobs_newest_first(client: FlaskClient, submit, no_jobs) -> None:
    ids = [submit()["id"] for _ in range(3)]

    body = client.get("/v1/jobs").get_json()

    assert [job["id"] for job in body["data"]] == ids[::-1]
    assert body["next_cursor"] is None


def test_list_pages_through_every_job_once_with_the_cursor(client: FlaskClient, submit, no_jobs) -> None:
    ids = [submit()["id"] for _ in range(7)]

    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/jobs", query_string=query).get_json()
        seen += [job["id"] for job in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert seen == ids[::-1]
    assert pages == 3


def test_list_has_no_next_cursor_when_the_page_ends_exactly_at_the_last_job(
    client: FlaskClient, submit, no_jobs
) -> None:
    for _ in range(2):
        submit()

    body = client.get("/v1/jobs?limit=2").get_json()

    assert len(body["data"]) == 2
    assert body["next_cursor"] is None


def test_list_filters_by_status_and_model(client: FlaskClient, submit, no_jobs, api_settings: Settings) -> None:
    store = JobStore(api_settings.database_url, view=dict)
    queued_wan = submit()["id"]
    running_wan = submit()["id"]
    store.claim(running_wan, "test-worker", 60)
    canceled_ltx = submit(model="tiny-ltx")["id"]
    client.post(f"/v1/jobs/{canceled_ltx}/cancel")

    def ids(query: str) -> list[str]:
        return [job["id"] for job in client.get(f"/v1/jobs?{query}").get_json()["data"]]

    assert ids("status=queued") == [queued_wan]
    assert ids("status=running") == [running_wan]
    assert ids("status=canceled") == [canceled_ltx]
    assert ids("model=tiny-wan") == [running_wan, queued_wan]
    assert ids("model=tiny-ltx&status=canceled") == [canceled_ltx]
    assert ids("model=tiny-ltx&status=queued") == []
    assert ids("model=unserved-model") == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("status=", "status"),
        ("model=", "model"),
        ("limit=", "limit"),
        ("cursor=", "cursor"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=WyJub3QtYS1kYXRlIiwgIngiXQ", "cursor"),
        ("cursor=12345678901234567." + "a" * 32, "cursor"),
        ("model=" + "m" * 201, "model"),
        ("model=a%00b", "model"),
    ],
    ids=[
        "unknown status",
        "empty status",
        "empty model",
        "empty limit",
        "empty cursor",
        "limit zero",
        "limit over 100",
        "limit not a number",
        "limit negative",
        "cursor garbage",
        "cursor of another shape",
        "cursor beyond the year 2286",
        "model too long",
        "model with NUL",
    ],
)
def test_list_refuses_a_bad_filter_value_with_422_naming_it(client: FlaskClient, query: str, field: str) -> None:
    response = client.get(f"/v1/jobs?{query}")

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == field
