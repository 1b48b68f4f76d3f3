"""What the admin dashboard reads and does: job search, job detail, queues, chart series, retry and redeliver.

Reads are plain SQL over the job tables; job state changes go through `JobStore` (cancel, create), and a
redelivery resets the delivery row so the webhook sender sends it again under the same `webhook-id`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Text, and_, cast, func, or_, select, text

from api.metrics import queue_depths, redis_client
from api.services import Services
from vidserve.db import get_engine, session_factory
from vidserve.jobs import JobConflict, JobNotFound
from vidserve.queue import announce_delivery
from vidserve.schema import Job, JobStatus, WebhookAttempt, WebhookDelivery
from vidserve.webhook_store import WebhookStore

PAGE_SIZE = 25
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELED})
# Chart ranges: how far back, and the width of one bucket.
RANGES = {"hour": (dt.timedelta(hours=1), 60), "day": (dt.timedelta(days=1), 900)}


@dataclass
class JobFilter:
    status: str = ""
    model: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    q: str = ""
    page: int = 1


@dataclass
class JobPage:
    jobs: list[Job]
    total: int
    page: int
    pages: int


@dataclass
class Delivery:
    row: WebhookDelivery
    attempts: list[WebhookAttempt] = field(default_factory=list)


def search_jobs(svc: Services, f: JobFilter) -> JobPage:
    """Newest first, filtered; `q` matches the prompt (case-insensitive substring) or the id (prefix)."""
    conditions = []
    if f.status:
        conditions.append(Job.status == JobStatus(f.status))
    if f.model:
        conditions.append(Job.model == f.model)
    if f.since:
        conditions.append(Job.created_at >= f.since)
    if f.until:
        conditions.append(Job.created_at < f.until)
    if f.q:
        pattern = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(
            or_(Job.params["prompt"].astext.ilike(f"%{pattern}%"), cast(Job.id, Text).ilike(f"{pattern.lower()}%"))
        )
    where = and_(*conditions) if conditions else and_(True)
    with session_factory(svc.settings.database_url)() as s:
        total = s.scalar(select(func.count()).select_from(Job).where(where)) or 0
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(1, f.page), pages)
        jobs = list(
            s.scalars(
                select(Job)
                .where(where)
                .order_by(Job.created_at.desc(), Job.id.desc())
                .limit(PAGE_SIZE)
                .offset((page - 1) * PAGE_SIZE)
            )
        )
    return JobPage(jobs, total, page, pages)


def deliveries(svc: Services, job_id: uuid.UUID) -> list[Delivery]:
    with session_factory(svc.settings.database_url)() as s:
        rows = list(
            s.scalars(
                select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.created_at)
            )
        )
        found = [Delivery(row) for row in rows]
        for d in found:
            d.attempts = list(
                s.scalars(
                    select(WebhookAttempt).where(WebhookAttempt.delivery_id == d.row.id).order_by(WebhookAttempt.id)
                )
            )
    return found


def cancel_jobs(svc: Services, ids: list[str]) -> tuple[int, list[str]]:
    """Cancel each job that is still queued or running; returns (how many, problems)."""
    done, problems = 0, []
    for job_id in ids:
        try:
            svc.jobs.cancel(job_id)
            done += 1
        except (JobConflict, JobNotFound) as e:
            problems.append(f"{job_id}: {e or 'not found'}")
    return done, problems


def retry_job(svc: Services, job_id: str, by: str) -> Job:
    """A failed or canceled job runs again as a new job of the same owner (API key), with the same model,
    parameters (seed included), priority, webhook URL, webhook events and metadata; the old job stays as it was,
    so its history is never rewritten. The new job's `job.queued` event names the old job and `by`, the admin
    credential that asked for the retry, so the owner's timeline says whose retry it is."""
    old = svc.jobs.get(job_id)
    if old.status not in RETRYABLE:
        raise JobConflict(f"job is {old.status.value}; only failed or canceled jobs can be retried")
    new = svc.jobs.create(
        model=old.model,
        params=dict(old.params),
        webhook_url=old.webhook_url,
        webhook_events=old.webhook_events,
        metadata=old.client_metadata,
        api_key_id=old.api_key_id,
        priority=old.priority,
        queued_detail={"retry_of": str(old.id), "retried_by": by},
    )
    svc.publish(new)
    return new


def retry_jobs(svc: Services, ids: list[str], by: str) -> tuple[list[Job], list[str]]:
    created, problems = [], []
    for job_id in ids:
        try:
            created.append(retry_job(svc, job_id, by))
        except (JobConflict, JobNotFound) as e:
            problems.append(f"{job_id}: {e or 'not found'}")
    return created, problems


def redeliver(svc: Services, delivery_id: str) -> bool:
    """Make a delivered or failed webhook pending again with a fresh attempt budget, and send it now."""
    try:
        key = uuid.UUID(delivery_id)
    except ValueError:
        return False
    if not WebhookStore(svc.settings.database_url).redeliver(key, force=True):
        return False
    announce_delivery(svc.celery, key)
    return True


def queues(svc: Services) -> list[dict[str, Any]]:
    """Per model: messages in its Redis queue, queued and running jobs, and the oldest waiting job."""
    models = svc.registry.names()
    client = redis_client(svc.settings)
    try:
        depths = queue_depths(svc.settings, models, client)
    finally:
        client.close()
    with get_engine(svc.settings.database_url).connect() as conn:
        counts = {
            (r.model, r.status): r.n
            for r in conn.execute(
                text(
                    "SELECT model, status::text AS status, count(*) AS n FROM jobs"
                    " WHERE status IN ('queued', 'running') GROUP BY 1, 2"
                )
            )
        }
        oldest = {
            r.model: r
            for r in conn.execute(
                text(
                    "SELECT DISTINCT ON (model) model, id, created_at FROM jobs WHERE status = 'queued'"
                    " ORDER BY model, created_at, id"
                )
            )
        }
    now = dt.datetime.now(dt.UTC)
    rows = []
    for model in models:
        old = oldest.get(model)
        rows.append(
            {
                "model": model,
                "depth": depths.get(model, 0),
                "queued": counts.get((model, "queued"), 0),
                "running": counts.get((model, "running"), 0),
                "oldest_id": str(old.id) if old else None,
                "oldest_age": (now - old.created_at).total_seconds() if old else None,
            }
        )
    return rows


def chart_series(svc: Services, range_name: str) -> dict[str, Any]:
    """Series for the charts page: finished per minute, p50/p95 queue and run time, cache reuse per bucket,
    and the batch-size distribution, over the last hour (1-minute buckets) or day (15-minute buckets)."""
    span, bucket = RANGES[range_name]
    now = dt.datetime.now(dt.UTC)
    start = now - span
    params = {"start": start, "bucket": bucket}
    bucket_sql = "to_timestamp(floor(extract(epoch FROM finished_at) / :bucket) * :bucket)"
    with get_engine(svc.settings.database_url).connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {bucket_sql} AS bucket_at, count(*) AS finished,"
                " count(*) FILTER (WHERE status = 'succeeded') AS succeeded,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)) AS q50,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)) AS q95,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS r50,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS r95,"
                " sum((stats->>'steps_computed')::float) AS computed,"
                " sum((stats->>'steps_reused')::float) AS reused"
                " FROM jobs WHERE finished_at >= :start GROUP BY 1 ORDER BY 1"
            ),
            params,
        ).all()
        sizes = conn.execute(
            text(
                "SELECT b::int AS size, count(*) AS n FROM jobs, jsonb_array_elements_text("
                " CASE WHEN jsonb_typeof(stats->'batch_sizes') = 'array' THEN stats->'batch_sizes' ELSE '[]' END) AS b"
                " WHERE status = 'succeeded' AND finished_at >= :start GROUP BY 1 ORDER BY 1"
            ),
            params,
        ).all()
    by_time = {r.bucket_at: r for r in rows}
    labels, finished, q50, q95, r50, r95, reuse = [], [], [], [], [], [], []
    first = dt.datetime.fromtimestamp((start.timestamp() // bucket) * bucket, dt.UTC)
    t = first
    while t <= now:
        r = by_time.get(t)
        labels.append(t.strftime("%H:%M"))
        finished.append(round((r.finished if r else 0) / (bucket / 60), 3))
        q50.append(_round(r.q50) if r else None)
        q95.append(_round(r.q95) if r else None)
        r50.append(_round(r.r50) if r else None)
        r95.append(_round(r.r95) if r else None)
        total = (r.computed or 0) + (r.reused or 0) if r else 0
        reuse.append(round(100 * (r.reused or 0) / total, 1) if total else None)
        t += dt.timedelta(seconds=bucket)
    return {
        "range": range_name,
        "bucket_seconds": bucket,
        "labels": labels,
        "finished_per_minute": finished,
        "queue_p50": q50,
        "queue_p95": q95,
        "run_p50": r50,
        "run_p95": r95,
        "cache_reuse_percent": reuse,
        "batch_sizes": {"sizes": [r.size for r in sizes], "forwards": [r.n for r in sizes]},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
