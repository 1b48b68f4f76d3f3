"""MP4 encoding of generated frames through PyAV: H.264, yuv420p, `+faststart` so players start at once.

yuv420p halves the chroma resolution, so H.264 needs even dimensions: odd frames are padded by one
repeated edge row/column, never scaled.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

CONTENT_TYPE = "video/mp4"


@dataclass(frozen=True)
class EncodedVideo:
    data: bytes
    num_frames: int
    width: int
    height: int
    fps: int
    content_type: str = CONTENT_TYPE


def _even(frames: np.ndarray) -> np.ndarray:
    pad_h = frames.shape[1] % 2
    pad_w = frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def encode_mp4(frames: np.ndarray, fps: int, crf: int = 18) -> EncodedVideo:
    """Encode uint8 frames shaped (F, H, W, 3) as an H.264 MP4 held in memory."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be shaped (F, H, W, 3) with F >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if fps < 1:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = np.ascontiguousarray(_even(frames))
    num_frames, height, width, _ = frames.shape

    # +faststart moves the index (moov) before the media data so a browser can play while downloading. The
    # muxer rewrites the file in a second pass by reopening it by name, which an in-memory buffer cannot do.
    with tempfile.TemporaryDirectory(prefix="vidserve-mp4-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        _write(path, frames, fps, crf)
        with open(path, "rb") as fh:
            data = fh.read()
    return EncodedVideo(data, num_frames, width, height, fps)


def _write(path: str, frames: np.ndarray, fps: int, crf: int) -> None:
    _, height, width, _ = frames.shape
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode an MP4 back to uint8 RGB frames (F, H, W, 3); used by tests and checks."""
    with av.open(io.BytesIO(data), mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
