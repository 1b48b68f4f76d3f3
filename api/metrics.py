"""`GET /metrics`: Prometheus metrics computed at scrape time from Postgres, Redis and the worker heartbeats.

A custom collector reads the source of truth on every scrape, so gunicorn's several processes need no
multiprocess setup and every API process answers the same numbers. `METRICS` documents every family.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from api.services import Services, services
from vidserve.db import get_engine
from vidserve.heartbeats import read_heartbeats
from vidserve.jobs import PRIORITIES
from vidserve.queue import queue_for
from vidserve.schema import JobStatus
from vidserve.settings import Settings

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

# (name, type, labels, help): the reference table in the README is this list.
METRICS: list[tuple[str, str, str, str]] = [
    ("vidserve_jobs", "gauge", "state, model", "jobs in each state, per model"),
    ("vidserve_queue_depth", "gauge", "model", "messages waiting in the model's Celery queue (Redis)"),
    ("vidserve_queue_oldest_seconds", "gauge", "model", "age of the oldest queued job (0 when none)"),
    ("vidserve_job_duration_seconds", "histogram", "model, state", "end to end, created to finished, of finished jobs"),
    ("vidserve_job_queue_seconds", "histogram", "model", "created to started (last attempt) of started jobs"),
    (
        "vidserve_job_queue_wait_seconds",
        "histogram",
        "model, key_class, priority",
        "created to started of started jobs, by key class (anonymous; default: weight 1; heavy: above 1; light: below"
        " 1) and priority (low, normal, high)",
    ),
    ("vidserve_job_run_seconds", "histogram", "model, state", "started to finished (last attempt) of finished jobs"),
    ("vidserve_batch_size", "histogram", "model", "requests per transformer forward that a succeeded job ran in"),
    ("vidserve_steps_computed_total", "counter", "model", "denoising steps computed for succeeded jobs"),
    ("vidserve_steps_reused_total", "counter", "model", "denoising steps served from the step cache"),
    ("vidserve_webhook_deliveries", "gauge", "status", "webhook deliveries by status (pending, delivered, failed)"),
    (
        "vidserve_webhook_attempts_total",
        "counter",
        "outcome",
        "webhook HTTP attempts: success (2xx), http_error (other status), network_error (no response)",
    ),
    ("vidserve_workers", "gauge", "kind", "live worker processes (heartbeat not expired), gen or webhooks"),
    ("vidserve_worker_slots", "gauge", "node", "job slots (the window) of each live worker"),
    ("vidserve_worker_busy_slots", "gauge", "node", "slots holding a running job"),
    ("vidserve_worker_models", "gauge", "node, model", "1 for each model a live worker serves"),
    ("vidserve_scrape_errors", "gauge", "source", "1 when a source (postgres, redis) failed during this scrape"),
]

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# kombu's Redis transport keeps a queue's priority levels in extra lists `<queue>\x06\x16<priority>`.
_PRIORITY_SEP = "\x06\x16"
_PRIORITIES = (3, 6, 9)


def queue_depths(settings: Settings, models: list[str], client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each model's `gen.<model>` list (and its priority lists) under the key prefix."""
    pipe = client.pipeline()
    for model in models:
        base = settings.redis_prefix + queue_for(model)
        pipe.llen(base)
        for priority in _PRIORITIES:
            pipe.llen(f"{base}{_PRIORITY_SEP}{priority}")
    counts = pipe.execute()
    per = 1 + len(_PRIORITIES)
    return {model: int(sum(counts[i * per : (i + 1) * per])) for i, model in enumerate(models)}


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)


def _histogram_sql(expr: str, buckets: tuple[float, ...]) -> str:
    # One pass per histogram: each bucket is a FILTERed count (cumulative, as Prometheus wants).
    counts = ", ".join(f"count(*) FILTER (WHERE v <= {b})" for b in buckets)
    return f"count(v), coalesce(sum(v), 0), {counts}"


class VidserveCollector(Collector):
    """Computes every metric in `METRICS` when collected."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        errors = {"postgres": 0, "redis": 0}
        try:
            yield from self._from_postgres()
        except Exception:
            log.warning("metrics: postgres part failed", exc_info=True)
            errors["postgres"] = 1
        try:
            yield from self._from_redis()
        except Exception:
            log.warning("metrics: redis part failed", exc_info=True)
            errors["redis"] = 1
        g = GaugeMetricFamily("vidserve_scrape_errors", _help("vidserve_scrape_errors"), labels=["source"])
        for source, failed in errors.items():
            g.add_metric([source], failed)
        yield g

    def _from_postgres(self) -> Iterator[Metric]:
        models = self.svc.registry.names()
        with get_engine(self.svc.settings.database_url).connect() as conn:
            by_state = {
                (r.status, r.model): r.n
                for r in conn.execute(
                    text("SELECT status::text AS status, model, count(*) AS n FROM jobs GROUP BY 1, 2")
                )
            }
            g = GaugeMetricFamily("vidserve_jobs", _help("vidserve_jobs"), labels=["state", "model"])
            for model in sorted(set(models) | {m for _, m in by_state}):
                for state in JobStatus:
                    g.add_metric([state.value, model], by_state.get((state.value, model), 0))
            yield g

            oldest = dict(
                conn.execute(
                    text(
                        "SELECT model, extract(epoch FROM now() - min(created_at)) FROM jobs"
                        " WHERE status = 'queued' GROUP BY 1"
                    )
                ).all()
            )
            g = GaugeMetricFamily(
                "vidserve_queue_oldest_seconds", _help("vidserve_queue_oldest_seconds"), labels=["model"]
            )
            for model in models:
                g.add_metric([model], float(oldest.get(model) or 0.0))
            yield g

            yield self._histogram(
                conn,
                "vidserve_job_duration_seconds",
                ["model", "state"],
                "extract(epoch FROM finished_at - created_at)",
                "finished_at IS NOT NULL",
                DURATION_BUCKETS,
            )
            yield self._histogram(
                conn,
                "vidserve_job_queue_seconds",
                ["model"],
                "extract(epoch FROM started_at - created_at)",
                "started_at IS NOT NULL",
                DURATION_BUCKETS,
            )
            yield self._queue_wait(conn)
            yield self._histogram(
                conn,
                "vidserve_job_run_seconds",
                ["model", "state"],
                "extract(epoch FROM finished_at - started_at)",
                "finished_at IS NOT NULL AND started_at IS NOT NULL",
                DURATION_BUCKETS,
            )

            # Batch sizes: one observation per forward, from each succeeded job's engine statistics.
            rows = conn.execute(
                text(
                    f"SELECT model, {_histogram_sql('v', BATCH_BUCKETS)} FROM ("
                    " SELECT model, b::float AS v FROM jobs, jsonb_array_elements_text("
                    "   CASE WHEN jsonb_typeof(stats->'batch_sizes') = 'array' THEN stats->'batch_sizes' ELSE '[]' END"
                    " ) AS b WHERE status = 'succeeded') AS t GROUP BY model"
                )
            ).all()
            h = HistogramMetricFamily("vidserve_batch_size", _help("vidserve_batch_size"), labels=["model"])
            for row in rows:
                h.add_metric([row[0]], _buckets(row, BATCH_BUCKETS), row[2])
            yield h

            steps = conn.execute(
                text(
                    "SELECT model, coalesce(sum((stats->>'steps_computed')::float), 0),"
                    " coalesce(sum((stats->>'steps_reused')::float), 0)"
                    " FROM jobs WHERE status = 'succeeded' AND stats IS NOT NULL GROUP BY model"
                )
            ).all()
            computed = CounterMetricFamily(
                "vidserve_steps_computed", _help("vidserve_steps_computed_total"), labels=["model"]
            )
            reused = CounterMetricFamily(
                "vidserve_steps_reused", _help("vidserve_steps_reused_total"), labels=["model"]
            )
            sums = {model: (done, cached) for model, done, cached in steps}
            for model in sorted(set(models) | set(sums)):
                done, cached = sums.get(model, (0.0, 0.0))
                computed.add_metric([model], done)
                reused.add_metric([model], cached)
            yield computed
            yield reused

            deliveries = dict(
                conn.execute(text("SELECT status::text, count(*) FROM webhook_deliveries GROUP BY 1")).all()
            )
            g = GaugeMetricFamily(
                "vidserve_webhook_deliveries", _help("vidserve_webhook_deliveries"), labels=["status"]
            )
            for status in ("pending", "delivered", "failed"):
                g.add_metric([status], deliveries.get(status, 0))
            yield g

            outcomes = dict(
                conn.execute(
                    text(
                        "SELECT CASE WHEN status_code BETWEEN 200 AND 299 AND error IS NULL THEN 'success'"
                        " WHEN status_code IS NOT NULL THEN 'http_error' ELSE 'network_error' END, count(*)"
                        " FROM webhook_attempts GROUP BY 1"
                    )
                ).all()
            )
            c = CounterMetricFamily(
                "vidserve_webhook_attempts", _help("vidserve_webhook_attempts_total"), labels=["outcome"]
            )
            for outcome in ("success", "http_error", "network_error"):
                c.add_metric([outcome], outcomes.get(outcome, 0))
            yield c

    def _queue_wait(self, conn: Any) -> Metric:
        """Created to started, by model, key class and priority: whether the fair queue serves every class."""
        key_class = (
            "CASE WHEN k.id IS NULL THEN 'anonymous' WHEN k.weight > 1 THEN 'heavy' WHEN k.weight < 1 THEN 'light'"
            " ELSE 'default' END"
        )
        priority = " ".join(f"WHEN {number} THEN '{name}'" for name, number in PRIORITIES.items())
        rows = conn.execute(
            text(
                f"SELECT model, key_class, priority, {_histogram_sql('v', DURATION_BUCKETS)} FROM"
                f" (SELECT j.model, {key_class} AS key_class, CASE j.priority {priority} END AS priority,"
                " extract(epoch FROM j.started_at - j.created_at) AS v"
                " FROM jobs j LEFT JOIN api_keys k ON k.id = j.api_key_id WHERE j.started_at IS NOT NULL) AS t"
                " GROUP BY 1, 2, 3"
            )
        ).all()
        name = "vidserve_job_queue_wait_seconds"
        h = HistogramMetricFamily(name, _help(name), labels=["model", "key_class", "priority"])
        for row in rows:
            h.add_metric([str(x) for x in row[:3]], _buckets(row[2:], DURATION_BUCKETS), float(row[4]))
        return h

    def _histogram(
        self, conn: Any, name: str, labels: list[str], value: str, where: str, buckets: tuple[float, ...]
    ) -> Metric:
        columns = ", ".join({"model": "model", "state": "status::text"}[label] for label in labels)
        rows = conn.execute(
            text(
                f"SELECT {columns}, {_histogram_sql('v', buckets)} FROM"
                f" (SELECT model, status, {value} AS v FROM jobs WHERE {where}) AS t GROUP BY {columns}"
            )
        ).all()
        h = HistogramMetricFamily(name, _help(name), labels=labels)
        n = len(labels)
        for row in rows:
            h.add_metric([str(x) for x in row[:n]], _buckets(row[n - 1 :], buckets), float(row[n + 1]))
        return h

    def _from_redis(self) -> Iterator[Metric]:
        settings = self.svc.settings
        client = redis_client(settings)
        try:
            depths = queue_depths(settings, self.svc.registry.names(), client)
            beats = read_heartbeats(settings, client)
        finally:
            client.close()
        g = GaugeMetricFamily("vidserve_queue_depth", _help("vidserve_queue_depth"), labels=["model"])
        for model, depth in depths.items():
            g.add_metric([model], depth)
        yield g
        kinds = GaugeMetricFamily("vidserve_workers", _help("vidserve_workers"), labels=["kind"])
        for kind in ("gen", "webhooks"):
            kinds.add_metric([kind], sum(1 for b in beats if b.get("kind") == kind))
        yield kinds
        slots = GaugeMetricFamily("vidserve_worker_slots", _help("vidserve_worker_slots"), labels=["node"])
        busy = GaugeMetricFamily("vidserve_worker_busy_slots", _help("vidserve_worker_busy_slots"), labels=["node"])
        served = GaugeMetricFamily("vidserve_worker_models", _help("vidserve_worker_models"), labels=["node", "model"])
        for beat in beats:
            node = str(beat.get("node"))
            slots.add_metric([node], beat.get("slots", 0))
            busy.add_metric([node], beat.get("busy", 0))
            for model in beat.get("models", []):
                served.add_metric([node, model], 1)
        yield slots
        yield busy
        yield served


def _help(name: str) -> str:
    return next(h for n, _, _, h in METRICS if n == name)


def _buckets(row: Any, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """`row` is (label, count, sum, bucket counts...); returns Prometheus's cumulative (le, count) pairs."""
    counts = row[3 : 3 + len(bounds)]
    return [(_le(b), float(c)) for b, c in zip(bounds, counts, strict=True)] + [("+Inf", float(row[1]))]


def _le(bound: float) -> str:
    return str(float(bound))


def build_registry(svc: Services) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VidserveCollector(svc))
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    from flask import current_app

    registry = current_app.extensions.get("vidserve.metrics")
    if registry is None:
        registry = current_app.extensions["vidserve.metrics"] = build_registry(services())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


OPENAPI_PATHS: dict[str, Any] = {
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics, computed from Postgres, Redis and worker heartbeats at scrape time",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
}
