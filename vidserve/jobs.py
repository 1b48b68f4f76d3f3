"""The job lifecycle: every state change is one conditional UPDATE that checks the current state.

`JobStore` is the only writer of job rows. A change that happens records a timeline event and, when the
job has a webhook URL, a webhook delivery in the same transaction; `publish_delivery` is called with the
new delivery ids after commit (the sweeper re-publishes any that were lost in between).

The queue's order lives here too (`claim_next`, `queue_place`): priority first, then weighted fair share
across API keys, then oldest first; Postgres decides it, never the broker.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session

from vidserve.db import session_factory
from vidserve.schema import (
    TERMINAL,
    ApiKey,
    DeliveryStatus,
    IdempotencyRecord,
    Job,
    JobEvent,
    JobStatus,
    WebhookDelivery,
)

WEBHOOK_EVENTS = frozenset({"job.running", "job.succeeded", "job.failed", "job.canceled"})
# Sent only to jobs that list it in `webhook_events`: one event each time progress crosses a tenth.
PROGRESS_EVENT = "job.progress"
PROGRESS_WEBHOOK_STEPS = 10
ALL_WEBHOOK_EVENTS = WEBHOOK_EVENTS | {PROGRESS_EVENT}

# A job's priority on submit, and the number stored (higher runs first).
PRIORITIES = {"low": 0, "normal": 1, "high": 2}
PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}
DEFAULT_PRIORITY = PRIORITIES["normal"]
# Jobs submitted with authentication off share this key in the fair queue: anonymous traffic is one key.
ANONYMOUS_KEY = uuid.UUID(int=0)
# The window of recent starts that the queue's start estimate divides by.
THROUGHPUT_WINDOW = dt.timedelta(minutes=10)
# How far back a key's service counts against its fair share: the jobs it started within this window (and those
# still running). Long enough to remember a flood, short enough that yesterday's usage is forgiven.
FAIR_SHARE_WINDOW = dt.timedelta(minutes=10)


class JobNotFound(LookupError):
    pass


class JobConflict(Exception):
    """The job is not in a state that allows the change (e.g. canceling a finished job)."""


@dataclass(frozen=True)
class QueuePlace:
    """Where a queued job stands: how many queued jobs run before it, and when it may start (None: no recent
    starts of its model to estimate from)."""

    position: int
    estimated_start_at: dt.datetime | None


class JobQuotaExceeded(Exception):
    """The API key already has `limit` unfinished jobs."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} unfinished jobs")
        self.limit = limit


JobView = Callable[[Job], dict[str, Any]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class JobStore:
    def __init__(
        self,
        database_url: str,
        view: JobView,
        publish_delivery: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self._sessions = session_factory(database_url)
        self._view = view
        self._publish_delivery = publish_delivery

    # ---- reading -------------------------------------------------------------------------------
    def get(self, job_id: uuid.UUID | str, owner: uuid.UUID | None = None) -> Job:
        """The job; JobNotFound also when `owner` (an API key id) is given and the job is another key's."""
        with self._sessions() as s:
            job = s.get(Job, _uuid(job_id))
            if job is None or (owner is not None and job.api_key_id != owner):
                raise JobNotFound(str(job_id))
            return job

    def list(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: tuple[dt.datetime, uuid.UUID] | None = None,
        order: str = "desc",
        owner: uuid.UUID | None = None,
    ) -> list[Job]:
        """Ordered by (created_at, id), newest first (`order="desc"`) or oldest first (`"asc"`); `after` is the
        (created_at, id) of the last job of the previous page, so a page starts just past it in that order.

        `owner` (an API key id) limits the list to that key's jobs; None lists every job.
        """
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be asc or desc, not {order!r}")
        newest_first = order == "desc"
        q = select(Job).limit(limit)
        q = q.order_by(*((Job.created_at.desc(), Job.id.desc()) if newest_first else (Job.created_at, Job.id)))
        if owner is not None:
            q = q.where(Job.api_key_id == owner)
        if status:
            q = q.where(Job.status == JobStatus(status))
        if model:
            q = q.where(Job.model == model)
        if after:
            at, last_id = after
            if newest_first:
                q = q.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < last_id)))
            else:
                q = q.where(or_(Job.created_at > at, and_(Job.created_at == at, Job.id > last_id)))
        with self._sessions() as s:
            return list(s.scalars(q))

    def events(self, job_id: uuid.UUID | str) -> list[JobEvent]:
        with self._sessions() as s:
            return list(s.scalars(select(JobEvent).where(JobEvent.job_id == _uuid(job_id)).order_by(JobEvent.id)))

    # ---- writing -------------------------------------------------------------------------------
    def create(
        self,
        *,
        model: str,
        params: dict[str, Any],
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        job_id: uuid.UUID | None = None,
        webhook_events: list[str] | None = None,
        api_key_id: uuid.UUID | None = None,
        max_active_jobs: int = 0,
        idempotency_record_id: int | None = None,
        priority: int = DEFAULT_PRIORITY,
        queued_detail: dict[str, Any] | None = None,
    ) -> Job:
        """Store a queued job; with `max_active_jobs` > 0, JobQuotaExceeded when the key has that many unfinished.

        `idempotency_record_id`: the submit's Idempotency-Key record, linked to the job in the same transaction.
        `queued_detail`: recorded on the timeline's `job.queued` event (e.g. whose retry the job is).

        The key's row is locked for the count and the insert, so concurrent submits of one key queue behind
        each other and cannot both take the last slot; counting rows (not a counter) survives any crash.
        """
        job = Job(
            id=job_id or uuid.uuid4(),
            status=JobStatus.QUEUED,
            model=model,
            params=params,
            progress=0.0,
            attempts=0,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            client_metadata=metadata,
            cancel_requested=False,
            api_key_id=api_key_id,
            priority=priority,
        )
        with self._sessions() as s, s.begin():
            if api_key_id is not None and max_active_jobs > 0:
                s.execute(select(ApiKey.id).where(ApiKey.id == api_key_id).with_for_update())
                active = s.scalar(select(func.count()).where(Job.api_key_id == api_key_id, Job.status.not_in(TERMINAL)))
                if (active or 0) >= max_active_jobs:
                    raise JobQuotaExceeded(max_active_jobs)
            s.add(job)
            s.flush()
            s.add(JobEvent(job_id=job.id, type="job.queued", attempt=0, detail=queued_detail))
            if idempotency_record_id is not None:
                s.execute(
                    update(IdempotencyRecord).where(IdempotencyRecord.id == idempotency_record_id).values(job_id=job.id)
                )
        return self.get(job.id)

    def mark_published(self, job_id: uuid.UUID) -> None:
        with self._sessions() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id).values(published_at=_now()))

    def claim(self, job_id: uuid.UUID | str, owner: str, lease_seconds: int) -> Job | None:
        """queued -> running for `owner`; None when the job is not queued (a duplicate delivery)."""
        return self._transition(
            job_id, where=_CLAIMABLE, values=_claim_values(owner, lease_seconds), event="job.running"
        )

    def claim_next(
        self, models: Sequence[str], owner: str, lease_seconds: int, *, above_priority: int | None = None
    ) -> Job | None:
        """queued -> running for `owner`: the first job of `models` in the queue's order; None only when no job of
        theirs is claimable. `above_priority`: only jobs of a higher priority (a preemption's claim).

        The order: higher priority first; then the key furthest below its weighted fair share (its recent service
        of the model plus its place among its own queued ones, over its weight: `_fair_queue`); then oldest first.
        Workers claiming at once take different jobs: the pick skips rows another transaction has locked. A row
        is also locked for a moment by writers that do not claim (the API or sweeper marking a job published just
        after its wake-up went out, a cancel), so when every claimable row the pick saw was skipped, the claim
        waits for the first one's lock and picks again rather than answer that nothing waits.
        """
        order = _fair_queue(models, above_priority).subquery()
        first = (
            select(Job.id)
            .join(order, order.c.id == Job.id)
            .where(*_CLAIMABLE)
            .order_by(*_in_queue_order(order))
            .limit(1)
        )
        # FOR NO KEY UPDATE (what the claim's UPDATE takes anyway): it does not conflict with the key-share locks
        # that inserting a row referencing the job (an event, a delivery) takes.
        pick = first.with_for_update(of=Job, skip_locked=True, key_share=True)
        new_deliveries: list[uuid.UUID] = []
        with self._sessions() as s, s.begin():
            while (job_id := s.scalar(pick)) is None:
                locked = s.scalar(first)  # a claimable row that the pick skipped: someone holds its lock
                if locked is None:
                    return None
                # Blocks until that transaction ends. Holding the lock then, this transaction's next pick sees the
                # row if it is still claimable (its own lock is not skipped) or else goes past it: each round
                # claims or leaves one row behind for good, so the loop ends.
                s.execute(select(Job.id).where(Job.id == locked).with_for_update(key_share=True))
            job = s.scalars(
                update(Job)
                .where(Job.id == job_id, *_CLAIMABLE)
                .values(**_claim_values(owner, lease_seconds))
                .returning(Job),
                execution_options={"synchronize_session": False},
            ).one()
            self._record(s, job, "job.running", None, new_deliveries)
        self._announce(new_deliveries)
        return job

    def queue_place(self, job: Job) -> QueuePlace | None:
        """Where a queued job stands among the queued jobs of its model; None when it is not queued."""
        return self.queue_places([job]).get(job.id)

    def queue_places(self, jobs: Iterable[Job]) -> dict[uuid.UUID, QueuePlace]:
        """The places of those of `jobs` that are queued (a page of a list), in two queries whatever their number:
        one ranks the queued jobs of their models in the queue's order, one counts recent starts per model."""
        queued = {job.id: job.model for job in jobs if job.status == JobStatus.QUEUED}
        if not queued:
            return {}
        models = sorted(set(queued.values()))
        order = _fair_queue(models).subquery()
        ranked = select(
            order.c.id,
            (func.row_number().over(partition_by=order.c.model, order_by=_in_queue_order(order)) - 1).label("before"),
        ).subquery()
        since = _now() - THROUGHPUT_WINDOW
        with self._sessions() as s:
            positions = dict(s.execute(select(ranked.c.id, ranked.c.before).where(ranked.c.id.in_(list(queued)))).all())
            recent = {
                model: (started, first)
                for model, started, first in s.execute(
                    select(Job.model, func.count(), func.min(Job.started_at))
                    .where(Job.model.in_(models), Job.started_at >= since)
                    .group_by(Job.model)
                )
            }
        places = {}
        for job_id, position in positions.items():  # those claimed or canceled since they were read are left out
            started, first = recent.get(queued[job_id], (0, None))
            estimate = None
            if started >= 2:
                per_second = started / max(1.0, (_now() - first).total_seconds())
                estimate = _now() + dt.timedelta(seconds=position / per_second)
            places[job_id] = QueuePlace(int(position), estimate)
        return places

    def renew_lease(self, job_id: uuid.UUID | str, owner: str, lease_seconds: int) -> bool | None:
        """Extend the lease; returns the job's cancel flag, or None when `owner` no longer holds it."""
        with self._sessions() as s, s.begin():
            row = s.execute(
                update(Job)
                .where(Job.id == _uuid(job_id), Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
                .values(lease_expires_at=_now() + dt.timedelta(seconds=lease_seconds))
                .returning(Job.cancel_requested)
            ).first()
            return None if row is None else bool(row[0])

    def set_progress(self, job_id: uuid.UUID | str, owner: str, progress: float) -> bool | None:
        """Record progress (0..1); returns the cancel flag, or None when `owner` lost the job.

        A job that asked for `job.progress` webhooks gets one each time its progress crosses a tenth.
        """
        new_deliveries: list[uuid.UUID] = []
        key = _uuid(job_id)
        # A subquery in the same statement reads the row as it was before this UPDATE: the previous progress.
        before = select(Job.progress).where(Job.id == key).scalar_subquery()
        with self._sessions() as s, s.begin():
            row = s.execute(
                update(Job)
                .where(Job.id == key, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
                .values(progress=max(0.0, min(1.0, progress)))
                .returning(Job, before),
                execution_options={"synchronize_session": False},
            ).first()
            if row is None:
                return None
            job, previous = row
            steps = PROGRESS_WEBHOOK_STEPS
            if (
                job.webhook_url
                and PROGRESS_EVENT in (job.webhook_events or ())
                and int(job.progress * steps) > int((previous or 0.0) * steps)
            ):
                self._add_delivery(s, job, PROGRESS_EVENT, new_deliveries)
            cancel_requested = bool(job.cancel_requested)
        self._announce(new_deliveries)
        return cancel_requested

    def succeed(
        self, job_id: uuid.UUID | str, owner: str, output: dict[str, Any], stats: dict[str, Any] | None
    ) -> Job | None:
        """running -> succeeded for `owner`; also queued -> succeeded when `owner`'s lease was released (the
        sweeper took it back while the database was away) and no worker has claimed the job since: the video is
        stored, so running it again would only spend a GPU on the same frames."""
        held = and_(Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
        released = and_(Job.status == JobStatus.QUEUED, Job.released_by == owner)
        return self._transition(
            job_id,
            where=[or_(held, released)],
            values=dict(
                status=JobStatus.SUCCEEDED,
                output=output,
                stats=stats,
                progress=1.0,
                finished_at=_now(),
                lease_owner=None,
                lease_expires_at=None,
                released_by=None,
            ),
            event="job.succeeded",
        )

    def fail(self, job_id: uuid.UUID | str, code: str, message: str, owner: str | None = None) -> Job | None:
        """Any non-terminal state -> failed; with `owner`, only the running job whose lease `owner` holds."""
        return self._transition(
            job_id,
            where=(
                [Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])]
                if owner is None
                else [Job.status == JobStatus.RUNNING, Job.lease_owner == owner]
            ),
            values=dict(
                status=JobStatus.FAILED,
                error_code=code,
                error_message=message[:4000],
                finished_at=_now(),
                lease_owner=None,
                lease_expires_at=None,
            ),
            event="job.failed",
            detail={"code": code, "message": message[:4000]},
        )

    def cancel(self, job_id: uuid.UUID | str) -> Job:
        """A queued job becomes canceled at once; a running one is flagged and stops at its next step."""
        job = self._transition(
            job_id,
            where=[Job.status == JobStatus.QUEUED],
            values=dict(status=JobStatus.CANCELED, finished_at=_now()),
            event="job.canceled",
        )
        if job is not None:
            return job
        with self._sessions() as s, s.begin():
            flagged = s.execute(
                update(Job)
                .where(Job.id == _uuid(job_id), Job.status == JobStatus.RUNNING)
                .values(cancel_requested=True)
                .returning(Job.id)
            ).first()
        if flagged is not None:
            return self.get(job_id)
        current = self.get(job_id)  # raises JobNotFound
        raise JobConflict(f"job is {current.status.value}")

    def mark_canceled(self, job_id: uuid.UUID | str, owner: str) -> Job | None:
        """running -> canceled, by the worker that stopped it."""
        return self._transition(
            job_id,
            where=[Job.status == JobStatus.RUNNING, Job.lease_owner == owner],
            values=dict(status=JobStatus.CANCELED, finished_at=_now(), lease_owner=None, lease_expires_at=None),
            event="job.canceled",
        )

    def release(self, job_id: uuid.UUID | str, owner: str, reason: str) -> Job | None:
        """running -> queued, giving the job back (worker shutdown, transient error)."""
        return self._transition(
            job_id,
            where=[Job.status == JobStatus.RUNNING, Job.lease_owner == owner],
            values=dict(
                status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None, published_at=None, released_by=owner
            ),
            event="job.requeued",
            detail={"reason": reason},
        )

    def unfinished(self, job_ids: Iterable[uuid.UUID | str]) -> set[str]:
        """Those of `job_ids` that name a job not yet in a terminal state (ids of no job are left out)."""
        keys = []
        for job_id in job_ids:
            try:
                keys.append(_uuid(job_id))
            except JobNotFound:  # not a job id at all
                continue
        if not keys:
            return set()
        with self._sessions() as s:
            rows = s.scalars(select(Job.id).where(Job.id.in_(keys), Job.status.not_in(TERMINAL)))
            return {str(job_id) for job_id in rows}

    def sweep(
        self, max_attempts: int, republish_after: float = 600.0, republish_all: bool = False
    ) -> tuple[list[Job], list[uuid.UUID]]:
        """Return dead workers' jobs to the queue (or fail them after `max_attempts`).

        Returns the queued jobs that need a (re-)published message (never published, or published more
        than `republish_after` seconds ago: a broker that lost its messages; every queued job when
        `republish_all`, once the broker is known to have lost its data) and pending webhook deliveries
        whose message may have been lost. Duplicate messages are harmless: claiming is conditional.
        """
        now = _now()
        with self._sessions() as s:
            expired = list(s.scalars(select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)))
        for job_id in expired:
            job = self.get(job_id)
            if job.attempts >= max_attempts:
                self.fail(job_id, "worker_lost", f"worker lost the job {job.attempts} times", owner=job.lease_owner)
            else:
                self.release(job_id, job.lease_owner or "", "lease expired")
        stale = now - dt.timedelta(seconds=republish_after)
        lost = now - dt.timedelta(seconds=60)
        with self._sessions() as s:
            to_publish = list(
                s.scalars(
                    select(Job).where(
                        Job.status == JobStatus.QUEUED,
                        or_(
                            and_(Job.published_at.is_(None), Job.updated_at < now - dt.timedelta(seconds=2)),
                            Job.published_at < stale,
                            and_(Job.published_at.is_not(None), republish_all),
                        ),
                    )
                )
            )
            deliveries = list(
                s.scalars(
                    select(WebhookDelivery.id).where(
                        WebhookDelivery.status == DeliveryStatus.PENDING,
                        or_(
                            and_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.created_at < lost),
                            WebhookDelivery.next_attempt_at < lost,
                        ),
                    )
                )
            )
        return to_publish, deliveries

    def delete(self, job_id: uuid.UUID | str) -> Job:
        """Remove a job with its timeline and webhook deliveries (the OpenAI-compatible DELETE).

        A worker still running it loses its lease at its next write and stops; the caller removes the video.
        """
        with self._sessions() as s, s.begin():
            job = s.scalars(delete(Job).where(Job.id == _uuid(job_id)).returning(Job)).first()
            if job is None:
                raise JobNotFound(str(job_id))
            return job

    # ---- internals -----------------------------------------------------------------------------
    def _transition(
        self,
        job_id: uuid.UUID | str,
        *,
        where: Iterable[Any],
        values: dict[str, Any],
        event: str,
        detail: dict[str, Any] | None = None,
    ) -> Job | None:
        new_deliveries: list[uuid.UUID] = []
        with self._sessions() as s, s.begin():
            job = s.scalars(
                update(Job).where(Job.id == _uuid(job_id), *where).values(**values).returning(Job),
                execution_options={"synchronize_session": False},
            ).first()
            if job is None:
                return None
            self._record(s, job, event, detail, new_deliveries)
        self._announce(new_deliveries)
        return job

    def _announce(self, new_deliveries: list[uuid.UUID]) -> None:
        if self._publish_delivery:
            for delivery_id in new_deliveries:
                self._publish_delivery(delivery_id)

    def _record(
        self, s: Session, job: Job, event: str, detail: dict[str, Any] | None, new_deliveries: list[uuid.UUID]
    ) -> None:
        s.add(JobEvent(job_id=job.id, type=event, attempt=job.attempts, detail=detail))
        wanted = WEBHOOK_EVENTS if job.webhook_events is None else job.webhook_events
        if job.webhook_url and event in wanted:
            self._add_delivery(s, job, event, new_deliveries)

    def _add_delivery(self, s: Session, job: Job, event: str, new_deliveries: list[uuid.UUID]) -> None:
        delivery = WebhookDelivery(
            id=uuid.uuid4(),
            job_id=job.id,
            event_type=event,
            url=job.webhook_url,
            payload={"type": event, "timestamp": _now().isoformat(), "data": self._view(job)},
            status=DeliveryStatus.PENDING,
            attempts=0,
        )
        s.add(delivery)
        new_deliveries.append(delivery.id)


_CLAIMABLE = (Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))


def _claim_values(owner: str, lease_seconds: int) -> dict[str, Any]:
    now = _now()
    return dict(
        status=JobStatus.RUNNING,
        attempts=Job.attempts + 1,
        lease_owner=owner,
        lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
        released_by=None,
        started_at=now,
        progress=0.0,
        error_code=None,
        error_message=None,
    )


def _fair_queue(models: Sequence[str], above_priority: int | None = None) -> Select[Any]:
    """The claimable jobs of `models`, each with its model, priority, its key's fair share and its age.

    A job's share is (its key's recent service of the model + its place among the key's queued jobs of the model
    and priority) / the key's weight, where recent service counts the key's jobs of the model started within
    FAIR_SHARE_WINDOW or still running. Taking the smallest share first is start-time fair queuing with jobs as the
    unit: a key with one job waiting goes before the 100th job of a key that floods whatever their ages, and keys
    of weights 2 and 1 that both wait get two starts to one. Each model is a queue of its own (its own engines).
    `above_priority` leaves out jobs of that priority or lower (their shares are unchanged: counted per priority).
    """
    key = func.coalesce(Job.api_key_id, literal(ANONYMOUS_KEY))
    since = _now() - FAIR_SHARE_WINDOW
    served = (
        select(Job.model, key.label("key"), func.count().label("jobs"))
        .where(Job.model.in_(models), or_(Job.status == JobStatus.RUNNING, Job.started_at >= since))
        .group_by(Job.model, key)
        .subquery()
    )
    waiting = [*_CLAIMABLE, Job.model.in_(models)]
    if above_priority is not None:
        waiting.append(Job.priority > above_priority)
    queued = (
        select(
            Job.id,
            Job.model,
            Job.priority,
            Job.created_at,
            key.label("key"),
            func.row_number()
            .over(partition_by=(Job.model, key, Job.priority), order_by=(Job.created_at, Job.id))
            .label("place"),
        )
        .where(*waiting)
        .subquery()
    )
    share = (func.coalesce(served.c.jobs, 0) + queued.c.place) / func.coalesce(ApiKey.weight, 1.0)
    columns = (queued.c.id, queued.c.model, queued.c.priority, queued.c.created_at, share.label("share"))
    same_key = and_(served.c.model == queued.c.model, served.c.key == queued.c.key)
    return select(*columns).select_from(queued.outerjoin(served, same_key).outerjoin(ApiKey, ApiKey.id == queued.c.key))


def _in_queue_order(order: Any) -> tuple[Any, ...]:
    return (order.c.priority.desc(), order.c.share, order.c.created_at, order.c.id)


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise JobNotFound(value) from None
