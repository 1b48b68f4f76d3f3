"""Adherence checker: reads a video of one coloured shape on a dark background and says which colour, shape
and direction it shows, so a generated clip can be scored against its prompt without a person looking.

Colour: the palette entry nearest the mean foreground chroma. Direction: the dominant axis and sign of the
foreground centroid's travel. Shape: per frame, the best intersection-over-union of the thresholded foreground
against a square, circle and apex-up triangle fitted to its bounding box, then a vote over frames.

A shape that wraps around the edges (the long-video clips: what leaves one edge enters at the opposite one) is
read on a torus: once foreground touches two opposite edges, centroids are circular means unwrapped from frame to
frame, and such a frame's mask is rolled to put the shape's centroid in the middle before its bounding box is
taken. A shape that stays inside the frame is read with plain centroids and boxes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from engine.demo.clips import COLOURS, SHAPES

# A pixel belongs to the shape once it is this bright (max channel, 0-255); the background is black.
_FOREGROUND_LEVEL = 60.0
_PALETTE = {name: np.asarray(rgb, dtype=np.float32) for name, rgb in COLOURS.items()}


@dataclass(frozen=True)
class Reading:
    colour: str | None
    shape: str | None
    direction: str | None

    def matches(self, colour: str, shape: str, direction: str) -> dict[str, bool]:
        return {"colour": self.colour == colour, "shape": self.shape == shape, "direction": self.direction == direction}


def _as_float_frames(video: np.ndarray) -> np.ndarray:
    """frames × H × W × 3 in 0-255, from uint8 or from floats in [0, 1]."""
    v = np.asarray(video)
    if v.dtype == np.uint8:
        return v.astype(np.float32)
    return np.clip(v.astype(np.float32), 0.0, 1.0) * 255.0


def read_colour(frames: np.ndarray) -> str | None:
    bright = frames.max(axis=-1)
    fg = frames[bright > _FOREGROUND_LEVEL]
    if len(fg) == 0:
        return None
    # Compare chromaticity (colour divided by its brightness) so a dim or blurred edge still votes right.
    mean = fg.mean(axis=0)
    chroma = mean / (np.linalg.norm(mean) + 1e-6)
    best = min(_PALETTE, key=lambda n: np.linalg.norm(chroma - _PALETTE[n] / np.linalg.norm(_PALETTE[n])))
    return best


def _masks(frames: np.ndarray) -> np.ndarray:
    return frames.max(axis=-1) > _FOREGROUND_LEVEL * 1.5


def _circular_mean(weight: np.ndarray, axis: int) -> float:
    """The weighted mean position along `axis` of a frame whose edges meet, as an angle in (-pi, pi]."""
    profile = weight.sum(axis=1 - axis)
    angles = 2 * np.pi * (np.arange(len(profile)) + 0.5) / len(profile)
    return float(np.angle((profile * np.exp(1j * angles)).sum()))


def _to_pixels(angle: float | np.ndarray, n: int) -> float | np.ndarray:
    return angle / (2 * np.pi) * n - 0.5


def _touches_opposite_edges(mask: np.ndarray) -> bool:
    """Whether foreground (frame or frames × H × W) sits on the left and right, or the top and bottom, edge."""
    return bool((mask[..., 0].any() and mask[..., -1].any()) or (mask[..., 0, :].any() and mask[..., -1, :].any()))


def _centres(weight: np.ndarray) -> np.ndarray:
    """Per frame with foreground, its centroid (x, y) in pixels: circular means unwrapped over frames when the
    shape wraps (one leaving at an edge and entering at the other keeps travelling the same way), else plain."""
    h, w = weight.shape[1:]
    frames = [wf for wf in weight if wf.sum() > 0]
    if not frames:
        return np.zeros((0, 2))
    if any(_touches_opposite_edges(wf > 0) for wf in frames):
        a = np.unwrap(np.asarray([(_circular_mean(wf, 1), _circular_mean(wf, 0)) for wf in frames]), axis=0)
        return np.stack([_to_pixels(a[:, 0], w), _to_pixels(a[:, 1], h)], axis=1)
    ys, xs = np.mgrid[0:h, 0:w]
    return np.asarray([((wf * xs).sum() / wf.sum(), (wf * ys).sum() / wf.sum()) for wf in frames])


def read_direction(frames: np.ndarray) -> str | None:
    weight = np.clip(frames.max(axis=-1) - _FOREGROUND_LEVEL, 0.0, None)
    c = _centres(weight)
    if len(c) < 2:
        return None
    t = np.arange(len(c)) - (len(c) - 1) / 2
    # A least-squares slope uses every frame, so one smeared frame does not flip the answer.
    vx, vy = (t[:, None] * (c - c.mean(axis=0))).sum(axis=0) / (t * t).sum()
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    circle = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
    frac = (ys + 0.5) / h
    triangle = np.abs(xs + 0.5 - w / 2) <= frac * w / 2
    return {"square": np.ones((h, w), dtype=bool), "circle": circle, "triangle": triangle}


def _frame_shape(mask: np.ndarray) -> str | None:
    ys, xs = np.nonzero(mask)
    if len(ys) < 9:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1]
    scores = {}
    for name, tpl in _templates(y1 - y0, x1 - x0).items():
        scores[name] = (crop & tpl).sum() / max((crop | tpl).sum(), 1)
    return max(scores, key=scores.get)


def _centred(mask: np.ndarray) -> np.ndarray:
    """A mask on two opposite edges rolled so the shape's circular centroid sits in the middle: a wrapped shape
    becomes whole again (any other mask as it is)."""
    if not _touches_opposite_edges(mask):
        return mask
    h, w = mask.shape
    weight = mask.astype(np.float32)
    cx, cy = _to_pixels(_circular_mean(weight, 1), w), _to_pixels(_circular_mean(weight, 0), h)
    return np.roll(mask, (int(round(h / 2 - cy)), int(round(w / 2 - cx))), axis=(0, 1))


def read_shape(frames: np.ndarray) -> str | None:
    votes = Counter(s for s in (_frame_shape(_centred(m)) for m in _masks(frames)) if s is not None)
    return votes.most_common(1)[0][0] if votes else None


def read(video: np.ndarray) -> Reading:
    """What a video shows; `video` is frames × H × W × 3, uint8 or floats in [0, 1]."""
    frames = _as_float_frames(video)
    return Reading(read_colour(frames), read_shape(frames), read_direction(frames))


def score(videos: list[np.ndarray], labels: list[tuple[str, str, str]]) -> dict[str, float]:
    """Fraction of videos whose colour, shape and direction the checker reads as labelled, and all three."""
    hits = {"colour": 0, "shape": 0, "direction": 0, "all": 0}
    for video, (colour, shape, direction) in zip(videos, labels, strict=True):
        m = read(video).matches(colour, shape, direction)
        for k, v in m.items():
            hits[k] += int(v)
        hits["all"] += int(all(m.values()))
    n = max(len(videos), 1)
    return {k: v / n for k, v in hits.items()}


__all__ = ["Reading", "read", "score", "SHAPES"]
