"""`/metrics`: Prometheus text computed from Postgres, the Redis queues and worker heartbeats at scrape time.

Jobs are moved through their states with the real `JobStore` (SQL), a heartbeat is written by the real
`Heartbeat` class, and the scrape is parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import METRICS
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore
from vidserve.settings import Settings
from worker.heartbeat import Heartbeat


def scrape(client: FlaskClient) -> dict[str, list[Any]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_every_documented_metric_is_exported_with_help_and_type(client: FlaskClient, submit: Any) -> None:
    submit()
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind, _labels, help_text in METRICS:
        # The parser names a counter family without its `_total` suffix.
        family = families[name.removesuffix("_total")]
        assert family.type == kind and family.documentation == help_text, name


def test_jobs_by_state_and_queue_depth_follow_submissions(client: FlaskClient, submit: Any) -> None:
    before = scrape(client)
    queued_before = value(before, "vidserve_jobs", state="queued", model="tiny-ltx")
    depth_before = value(before, "vidserve_queue_depth", model="tiny-ltx")
    submit(model="tiny-ltx")
    submit(model="tiny-ltx")
    after = scrape(client)
    assert value(after, "vidserve_jobs", state="queued", model="tiny-ltx") == queued_before + 2
    # No worker consumes the API tests' Redis DB: both messages wait in gen.tiny-ltx.
    assert value(after, "vidserve_queue_depth", model="tiny-ltx") == depth_before + 2
    assert value(after, "vidserve_queue_oldest_seconds", model="tiny-ltx") >= 0
    assert value(after, "vidserve_scrape_errors", source="postgres") == 0
    assert value(after, "vidserve_scrape_errors", source="redis") == 0


def test_finished_jobs_feed_histograms_batch_sizes_and_step_counters(
    client: FlaskClient, submit: Any, api_settings: Settings
) -> None:
    store = JobStore(api_settings.database_url, lambda job: job_to_dict(job, None))
    before = scrape(client)
    count = dict(model="tiny-wan", state="succeeded")
    runs_before = (
        value(before, "vidserve_job_run_seconds_count", **count)
        if any(s.labels == count for s in before.get("vidserve_job_run_seconds_count", []))
        else 0
    )
    computed_before = sum(
        s.value for s in before.get("vidserve_steps_computed_total", []) if s.labels["model"] == "tiny-wan"
    )
    job = submit()
    owner = f"test/{uuid.uuid4().hex[:8]}"
    assert store.claim(job["id"], owner, 30) is not None
    stats = {"steps_computed": 3, "steps_reused": 1, "batch_sizes": [1, 2, 2, 4]}
    assert store.succeed(job["id"], owner, {"key": "videos/x.mp4"}, stats) is not None

    after = scrape(client)
    assert value(after, "vidserve_job_run_seconds_count", **count) == runs_before + 1
    assert value(after, "vidserve_job_duration_seconds_count", **count) >= 1
    assert value(after, "vidserve_job_queue_seconds_count", model="tiny-wan") >= 1
    inf = value(after, "vidserve_batch_size_bucket", model="tiny-wan", le="+Inf")
    two = value(after, "vidserve_batch_size_bucket", model="tiny-wan", le="2.0")
    assert inf >= 4 and two >= 3  # 1, 2, 2 are <= 2; 4 is not
    computed = value(after, "vidserve_steps_computed_total", model="tiny-wan")
    assert computed == computed_before + 3
    assert value(after, "vidserve_steps_reused_total", model="tiny-wan") >= 1


def test_a_live_worker_heartbeat_shows_as_worker_liveness(client: FlaskClient, api_settings: Settings) -> None:
    node = f"metrics-test-{uuid.uuid4().hex[:6]}"
    beat = Heartbeat(api_settings, node, ["tiny-wan"], slots=3)
    beat.beat()
    try:
        samples = scrape(client)
        assert value(samples, "vidserve_workers", kind="gen") >= 1
        assert value(samples, "vidserve_worker_slots", node=node) == 3
        assert value(samples, "vidserve_worker_busy_slots", node=node) == 0
        assert value(samples, "vidserve_worker_models", node=node, model="tiny-wan") == 1
    finally:
        beat.stop()  # a clean stop removes the key at once
    assert not any(s.labels.get("node") == node for s in scrape(client).get("vidserve_worker_slots", []))


def test_queue_wait_is_counted_by_key_class_and_priority(client: FlaskClient, api_settings: Settings) -> None:
    labels = {"model": "tiny-wan", "key_class": "anonymous", "priority": "high"}
    before = scrape(client)
    waited_before = (
        value(before, "vidserve_job_queue_wait_seconds_count", **labels)
        if any(s.labels == labels for s in before.get("vidserve_job_queue_wait_seconds_count", []))
        else 0
    )
    job = client.post("/v1/jobs", json={"prompt": "a heron", "priority": "high"}).get_json()
    store = JobStore(api_settings.database_url, lambda j: job_to_dict(j, None))
    assert store.claim(job["id"], f"test/{uuid.uuid4().hex[:8]}", 30) is not None

    after = scrape(client)
    assert value(after, "vidserve_job_queue_wait_seconds_count", **labels) == waited_before + 1
    assert value(after, "vidserve_job_queue_wait_seconds_bucket", **labels, le="+Inf") == waited_before + 1
