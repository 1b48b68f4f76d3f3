"""MP4 encoding of generated frames through PyAV: H.264, yuv420p, `+faststart` so players start at once.

Frames are encoded as they arrive (an array, or an iterator of frames or chunks of frames from a streaming
decode), so a long video is never held twice. yuv420p halves the chroma resolution, so H.264 needs even
dimensions: odd frames are padded by one repeated edge row/column, never scaled.
"""

from __future__ import annotations

import io
import os
import queue
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

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


class StreamAborted(Exception):
    """The frames' producer stopped before the end (its request failed or was canceled)."""


class FrameStream:
    """Frames handed over by a producer that must not wait (the engine's loop thread) to an encoder reading them
    on its own thread: `put` chunks as they are decoded, then `close`; iterating yields them in order."""

    _END = object()

    def __init__(self) -> None:
        self._chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._aborted = False

    def put(self, frames: np.ndarray) -> None:
        self._chunks.put(frames)

    def close(self) -> None:
        """No more frames: the iteration ends once the encoder has read what was put."""
        self._chunks.put(self._END)

    def abort(self) -> None:
        """The producer failed: the iteration stops at once with StreamAborted."""
        self._aborted = True
        self._chunks.put(self._END)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            chunk = self._chunks.get()
            if self._aborted:
                raise StreamAborted("the frames' producer stopped before the end")
            if chunk is self._END:
                return
            yield chunk


def _even(frame: np.ndarray) -> np.ndarray:
    pad_h = frame.shape[0] % 2
    pad_w = frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _single_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Each (H, W, 3) uint8 frame of `frames`, whose items are frames or (n, H, W, 3) chunks of them."""
    shape = None
    for item in frames:
        item = np.asarray(item)
        for frame in item if item.ndim == 4 else (item,):
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise ValueError(f"frames must be shaped (F, H, W, 3), got a frame shaped {frame.shape}")
            if frame.dtype != np.uint8:
                raise ValueError(f"frames must be uint8, got {frame.dtype}")
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise ValueError(f"every frame must be shaped {shape}, got {frame.shape}")
            yield frame


def encode_mp4(frames: np.ndarray | Iterable[np.ndarray], fps: int, crf: int = 18) -> EncodedVideo:
    """Encode uint8 frames as an H.264 MP4 held in memory.

    `frames` is an array shaped (F, H, W, 3), or an iterable of (H, W, 3) frames or (n, H, W, 3) chunks, each
    encoded as it comes: a streaming decode hands its frames over without ever stacking the whole video.
    """
    if fps < 1:
        raise ValueError(f"fps must be positive, got {fps}")
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"frames must be shaped (F, H, W, 3), got {frames.shape}")
    # +faststart moves the index (moov) before the media data so a browser can play while downloading. The
    # muxer rewrites the file in a second pass by reopening it by name, which an in-memory buffer cannot do.
    with tempfile.TemporaryDirectory(prefix="vidserve-mp4-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        num_frames, height, width = _write(path, _single_frames(frames), fps, crf)
        with open(path, "rb") as fh:
            data = fh.read()
    return EncodedVideo(data, num_frames, width, height, fps)


def _write(path: str, frames: Iterator[np.ndarray], fps: int, crf: int) -> tuple[int, int, int]:
    """Write `frames` to `path`; returns (frames, height, width) as encoded. The stream opens on the first frame,
    which gives its size; an empty iterator is refused before the file is made."""
    first = next(frames, None)
    if first is None:
        raise ValueError("frames must hold at least one frame")
    first = _even(first)
    height, width, _ = first.shape
    count = 0
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for image in _chain_first(first, frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return count, height, width


def _chain_first(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    for frame in rest:
        yield _even(frame)


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode an MP4 back to uint8 RGB frames (F, H, W, 3); used by tests and checks."""
    return np.stack(list(iter_mp4_frames(data)))


def iter_mp4_frames(data: bytes) -> Iterator[np.ndarray]:
    """The uint8 RGB frames (H, W, 3) of an MP4, one at a time."""
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
