"""The Postgres tables, as SQLAlchemy 2 declarative classes.

Every change here needs an Alembic migration under migrations/versions.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ApiKey(Base):
    """A bearer token of the REST API; only its SHA-256 is stored, its prefix is shown to tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    prefix: Mapped[str] = mapped_column(String(20), nullable=False, index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    # NULL: the deployment's default (VIDSERVE_MAX_CONCURRENT_JOBS_PER_KEY); 0: unlimited.
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    # NULL: the rate limiter's default.
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    # The key's weight in the fair queue: a key of weight 2 gets twice the share of a key of weight 1 while both wait.
    weight: Mapped[float] = mapped_column(Float, nullable=False, default=1.0, server_default="1")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", values_callable=lambda e: [m.value for m in e]),
        nullable=False,
        default=JobStatus.QUEUED,
    )
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    # The resolved generation parameters (defaults applied), exactly what the engine receives.
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # The webhook event types the job asked for; NULL: the state changes (job.running ... job.canceled).
    webhook_events: Mapped[list[str] | None] = mapped_column(JSONB)
    client_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    # {key, bytes, num_frames, width, height, fps, content_type} once succeeded.
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Engine statistics of the attempt that succeeded (steps computed/reused, batch sizes, seconds).
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The worker holding the job and until when; an expired lease lets another worker take it over.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # While queued again: the worker whose lease was released. Until another worker claims the job, that worker
    # may still record a result it finished (its final write failed while the database was away).
    released_by: Mapped[str | None] = mapped_column(String(200))
    # Outbox mark: when the Celery message was last published (NULL: never, the sweeper publishes it).
    published_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )
    # The API key that submitted the job; NULL: submitted with authentication off.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    # 0 low, 1 normal, 2 high (vidserve.jobs.PRIORITIES): the queue orders by priority before fairness.
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=1, server_default="1")

    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_model", "status", "model"),
        Index("ix_jobs_queue", "status", "model", "priority", "created_at"),
        Index("ix_jobs_model_started_at", "model", "started_at"),
    )


class JobEvent(Base):
    """One status change of a job: the job's timeline."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    type: Mapped[str] = mapped_column(String(50), nullable=False)  # job.queued, job.running, ...
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class WebhookDelivery(Base):
    """One webhook event for one job, delivered by the webhook sender with retries."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    event_type: Mapped[str] = mapped_column(String(50), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    # The signed body, fixed when the event happened so every retry sends the same bytes.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, name="delivery_status", values_callable=lambda e: [m.value for m in e]),
        nullable=False,
        default=DeliveryStatus.PENDING,
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One HTTP attempt of a webhook delivery."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False, index=True
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)


class IdempotencyRecord(Base):
    """One Idempotency-Key of one owner: in flight while `status_code` is NULL, then the stored response."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # The API key's id, or "anonymous" with authentication off: keys of different owners never meet.
    owner: Mapped[str] = mapped_column(String(64), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    # SHA-256 of method, path and canonical JSON body: the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    # The job the request created, set in the job's own transaction: a request that died before storing its
    # response is answered from this job rather than making a second one.
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)

    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_keys_owner_key"),)


class WebhookEndpoint(Base):
    """A webhook URL that answered 410 Gone: nothing more is sent to it until an operator enables it again."""

    __tablename__ = "webhook_endpoints"

    url: Mapped[str] = mapped_column(Text, primary_key=True)
    disabled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    reason: Mapped[str] = mapped_column(Text, nullable=False)
