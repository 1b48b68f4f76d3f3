"""Settings read from the environment: the one place every VIDSERVE_* variable is named.

Both the API and the worker build a `Settings` with `Settings.from_env()`; tests pass overrides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

# (variable, attribute, default, description); README's configuration table is generated from this list.
# fmt: off
ENV_VARS: list[tuple[str, str, Any, str]] = [
    ("VIDSERVE_DATABASE_URL", "database_url", "postgresql+psycopg://postgres@127.0.0.1:5432/vidserve",
     "SQLAlchemy URL of the Postgres database (created by `make run` when missing)"),
    ("VIDSERVE_REDIS_URL", "redis_url", "redis://127.0.0.1:6379/0", "Redis URL used as the Celery broker"),
    ("VIDSERVE_REDIS_PREFIX", "redis_prefix", "",
     "prefix of every Redis key the queues use, so several deployments (or test runs) can share one Redis DB"),
    ("VIDSERVE_HOST", "host", "127.0.0.1", "address the API binds to"),
    ("VIDSERVE_PORT", "port", 8000, "port the API listens on"),
    ("VIDSERVE_PUBLIC_URL", "public_url", "", "base URL clients use to reach the API (default http://HOST:PORT)"),
    ("VIDSERVE_S3_ENDPOINT", "s3_endpoint", "",
     "S3 endpoint URL (http://host:port); empty: `make run` starts a local S3 server"),
    ("VIDSERVE_S3_PUBLIC_URL", "s3_public_url", "",
     "S3 endpoint URL that clients can reach; presigned URLs are signed for it (default: the endpoint)"),
    ("VIDSERVE_S3_ACCESS_KEY", "s3_access_key", "vidserve", "S3 access key"),
    ("VIDSERVE_S3_SECRET_KEY", "s3_secret_key", "vidserve-secret", "S3 secret key"),
    ("VIDSERVE_S3_BUCKET", "s3_bucket", "vidserve-videos",
     "bucket of the videos and checkpoints (created if missing); one bucket per database: the sweeper deletes the "
     "checkpoints of jobs its database does not know"),
    ("VIDSERVE_S3_REGION", "s3_region", "us-east-1", "S3 region used for signing"),
    ("VIDSERVE_URL_TTL_SECONDS", "url_ttl_seconds", 3600, "lifetime of presigned video URLs"),
    ("VIDSERVE_MODELS_FILE", "models_file", "", "model registry TOML (default: engine/models.toml)"),
    ("VIDSERVE_MODEL_DIR", "model_dir", "var/models", "directory relative registry paths resolve against"),
    ("VIDSERVE_WORKER_MODELS", "worker_models", "", "comma-separated models a worker serves (default: all)"),
    ("VIDSERVE_WORKER_SLOTS", "worker_slots", 4, "jobs a worker holds at once (its window), batched together"),
    ("VIDSERVE_LEASE_SECONDS", "lease_seconds", 60, "a running job's lease; renewed while it runs"),
    ("VIDSERVE_MAX_ATTEMPTS", "max_attempts", 3, "attempts before a job whose worker died fails"),
    ("VIDSERVE_CHECKPOINT_EVERY_STEPS", "checkpoint_every_steps", 10,
     "a running job saves its denoising state to the bucket every N steps, so a re-delivered job resumes "
     "instead of restarting (0: off; cost in BENCHMARKS.md)"),
    ("VIDSERVE_RESULT_WRITE_SECONDS", "result_write_seconds", 120.0,
     "how long a worker keeps retrying (each second) the write that records a finished job while the database "
     "is away; the video is already stored, and the result still counts if the sweeper re-queued the job meanwhile"),
    ("VIDSERVE_UPLOAD_TRIES", "upload_tries", 4,
     "tries of a finished job's upload to S3 (its video, its latents) in place, its lease kept, before the job goes "
     "back to the queue"),
    ("VIDSERVE_UPLOAD_RETRY_SECONDS", "upload_retry_seconds", 1.0,
     "wait after an upload's first failed try, doubled after each further one (1, 2, 4 s)"),
    ("VIDSERVE_SWEEP_SECONDS", "sweep_seconds", 15, "how often the sweeper re-publishes lost jobs"),
    ("VIDSERVE_SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds", 10.0,
     "on SIGTERM, how long running jobs may go on to finish before they are stopped and handed back to the queue"),
    ("VIDSERVE_MAX_BODY_BYTES", "max_body_bytes", 65536, "largest request body the API accepts"),
    ("VIDSERVE_RATE_LIMIT_PER_MINUTE", "rate_limit_per_minute", 0,
     "job submissions (POST /v1/jobs and /v1/videos together) per API key, or per client address without one, "
     "in any 60 s; a key's own limit overrides it; 0: unlimited"),
    ("VIDSERVE_WEBHOOK_SECRET", "webhook_secret", "",
     "Standard Webhooks signing secret (whsec_<base64>); `make run` generates one in var/ when unset"),
    ("VIDSERVE_WEBHOOK_MAX_ATTEMPTS", "webhook_max_attempts", 8, "delivery attempts per webhook event"),
    ("VIDSERVE_WEBHOOK_TIMEOUT", "webhook_timeout", 10.0, "seconds to wait for a webhook receiver"),
    ("VIDSERVE_WEBHOOK_RETRY_SCALE", "webhook_retry_scale", 1.0,
     "multiplies the retry schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, each ±20%); tests use 0.01"),
    ("VIDSERVE_WEBHOOK_ALLOWED_NETWORKS", "webhook_allowed_networks", "",
     "comma-separated CIDRs webhooks may be sent to although not public (e.g. 127.0.0.0/8,::1/128); "
     "empty: public addresses only (`make run` allows loopback unless set)"),
    ("VIDSERVE_WEBHOOK_CONCURRENCY", "webhook_concurrency", 8, "deliveries one webhook sender process makes at once"),
    ("VIDSERVE_LOG_LEVEL", "log_level", "INFO", "log level of API and worker"),
    ("VIDSERVE_ADMIN_TOKEN", "admin_token", "",
     "password of the admin dashboard (/admin) and its API; empty: the dashboard is locked"),
    ("VIDSERVE_HEARTBEAT_SECONDS", "heartbeat_seconds", 5.0,
     "how often a worker writes its heartbeat to Redis; it expires after three periods"),
    ("VIDSERVE_AUTH", "auth", "on",
     "`on`: every job endpoint needs an API key (`vidserve keys create`); `off`: anyone may call it and sees "
     "every job (local use; `make run` turns it off unless set)"),
    ("VIDSERVE_MAX_CONCURRENT_JOBS_PER_KEY", "max_concurrent_jobs_per_key", 10,
     "queued plus running jobs one API key may have at once, unless the key sets its own; 0: unlimited"),
    ("VIDSERVE_IDEMPOTENCY_TTL_SECONDS", "idempotency_ttl_seconds", 86400,
     "how long a submit's Idempotency-Key and its stored response are kept"),
]
# fmt: on


@dataclass(frozen=True)
class Settings:
    database_url: str = ENV_VARS[0][2]
    redis_url: str = ENV_VARS[1][2]
    redis_prefix: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    s3_endpoint: str = ""
    s3_public_url: str = ""
    s3_access_key: str = "vidserve"
    s3_secret_key: str = "vidserve-secret"
    s3_bucket: str = "vidserve-videos"
    s3_region: str = "us-east-1"
    url_ttl_seconds: int = 3600
    models_file: str = ""
    model_dir: str = "var/models"
    worker_models: str = ""
    worker_slots: int = 4
    lease_seconds: int = 60
    max_attempts: int = 3
    checkpoint_every_steps: int = 10
    result_write_seconds: float = 120.0
    upload_tries: int = 4
    upload_retry_seconds: float = 1.0
    sweep_seconds: int = 15
    shutdown_grace_seconds: float = 10.0
    max_body_bytes: int = 65536
    rate_limit_per_minute: int = 0
    webhook_secret: str = ""
    webhook_max_attempts: int = 8
    webhook_timeout: float = 10.0
    webhook_retry_scale: float = 1.0
    webhook_allowed_networks: str = ""
    webhook_concurrency: int = 8
    log_level: str = "INFO"
    admin_token: str = ""
    heartbeat_seconds: float = 5.0
    auth: str = "on"
    max_concurrent_jobs_per_key: int = 10
    idempotency_ttl_seconds: int = 86400

    def __post_init__(self) -> None:
        if self.auth not in ("on", "off"):
            raise ValueError(f"VIDSERVE_AUTH must be on or off, got {self.auth!r}")
        if self.upload_tries < 1:
            raise ValueError("VIDSERVE_UPLOAD_TRIES must be 1 or more")
        if self.max_concurrent_jobs_per_key < 0:
            raise ValueError("VIDSERVE_MAX_CONCURRENT_JOBS_PER_KEY must be 0 (unlimited) or more")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for var, attr, _default, _ in ENV_VARS:
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = types[attr]
            try:
                values[attr] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
            except ValueError:
                raise ValueError(f"{var} must be a {kind}, got {raw!r}") from None
        values.update(overrides)
        return cls(**values)

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"

    @property
    def api_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def served_models(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]


def markdown_table() -> str:
    """The README's configuration table, generated from ENV_VARS (`python -m vidserve.settings`)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var, _attr, default, description in ENV_VARS:
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{var}` | {shown} | {description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
