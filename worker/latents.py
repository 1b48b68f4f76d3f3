"""A finished job's final clean latents in the object store, kept beside its MP4 so the video can be extended.

Stored with `torch.save` and read back with `weights_only=True`: a tensor and nothing that runs code on load.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from vidserve.storage import VideoStore

CONTENT_TYPE = "application/octet-stream"


class LatentsMissing(Exception):
    """The source job's kept latents are gone from the store (the job or its video was deleted)."""


def put_latents(videos: VideoStore, job_id: str, latents: torch.Tensor) -> dict[str, Any]:
    """Upload a job's final latents under its deterministic key; returns what the job's output records."""
    buffer = io.BytesIO()
    torch.save(latents.detach().to("cpu").contiguous(), buffer)
    data = buffer.getvalue()
    key = VideoStore.latents_key_for(job_id)
    videos.put(key, data, CONTENT_TYPE)
    return {"latents_key": key, "latents_bytes": len(data)}


def get_latents(videos: VideoStore, key: str) -> torch.Tensor:
    """The latents stored under `key`; LatentsMissing when the object is gone."""
    data = videos.get_if_exists(key)
    if data is None:
        raise LatentsMissing(f"no latents at {key}")
    latents = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(latents, torch.Tensor):
        raise LatentsMissing(f"{key} holds no tensor")
    return latents
