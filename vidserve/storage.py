"""The object store holding finished videos and running jobs' checkpoints (MinIO/S3 through the `minio` client).

Uploads use the internal endpoint; presigned GET URLs are signed for the public endpoint clients reach.
"""

from __future__ import annotations

import datetime as dt
import io
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import S3Error

from vidserve.settings import Settings


def _client(endpoint_url: str, settings: Settings, http_client: urllib3.PoolManager | None = None) -> Minio:
    parsed = urlparse(endpoint_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"S3 endpoint must be an http(s) URL, got {endpoint_url!r}")
    return Minio(
        parsed.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=parsed.scheme == "https",
        region=settings.s3_region,  # a fixed region: presigning needs no network round trip
        http_client=http_client,
    )


CHECKPOINT_PREFIX = "checkpoints/"


class VideoStore:
    def __init__(self, settings: Settings) -> None:
        if not settings.s3_endpoint:
            raise ValueError("VIDSERVE_S3_ENDPOINT is not set")
        self.bucket = settings.s3_bucket
        self.ttl = dt.timedelta(seconds=settings.url_ttl_seconds)
        self._internal = _client(settings.s3_endpoint, settings)
        self._public = _client(settings.s3_public_url or settings.s3_endpoint, settings)
        # Readiness probes must answer in seconds: no retries (minio's default spends ~6 s on a dead endpoint).
        probe_http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=2.0), retries=False)
        self._probe = _client(settings.s3_endpoint, settings, probe_http)

    @staticmethod
    def key_for(job_id: str) -> str:
        # Deterministic per job: a retried upload overwrites instead of leaving a second copy.
        return f"videos/{job_id}.mp4"

    @staticmethod
    def latents_key_for(job_id: str) -> str:
        # Beside the MP4 and deleted with it: the clean final latents an extension of the video continues from.
        return f"videos/{job_id}.latents.pt"

    @staticmethod
    def checkpoint_key(job_id: str) -> str:
        # One object per job, overwritten by each newer checkpoint; deleted when the job ends.
        return f"{CHECKPOINT_PREFIX}{job_id}/state.pt"

    def checkpoint_job_ids(self) -> list[str]:
        """The ids of the jobs that have a checkpoint in the bucket."""
        objects = self._internal.list_objects(self.bucket, prefix=CHECKPOINT_PREFIX, recursive=True)
        return sorted({obj.object_name.split("/")[1] for obj in objects if obj.object_name.count("/") == 2})

    def ensure_bucket(self) -> None:
        if not self._internal.bucket_exists(self.bucket):
            self._internal.make_bucket(self.bucket)

    def put(self, key: str, data: bytes, content_type: str = "video/mp4") -> None:
        self._internal.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        response = self._internal.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_if_exists(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key (other errors raise)."""
        try:
            return self.get(key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise

    def delete(self, key: str) -> None:
        """Remove a video (deleting a missing key is not an error in S3)."""
        self._internal.remove_object(self.bucket, key)

    def presigned_url(self, key: str) -> tuple[str, dt.datetime]:
        expires_at = dt.datetime.now(dt.UTC) + self.ttl
        return self._public.presigned_get_object(self.bucket, key, expires=self.ttl), expires_at

    def ping(self) -> None:
        """Raise unless the store answers and the bucket exists."""
        if not self._probe.bucket_exists(self.bucket):
            raise RuntimeError(f"bucket {self.bucket!r} does not exist")
