"""Synthetic training clips for the demo model: one coloured shape moving across a black frame.

Every clip is described by a `ClipSpec` (colour, shape, direction, size, speed, start, whether it wraps) and
rendered with anti-aliased edges; prompts read "a {colour} {shape} moving {direction}". A clip either keeps the
shape inside the frame (the first recipe) or lets it wrap around the edges, leaving on one side as it enters on the
other, so its motion can go on for any number of frames (what long videos are made of). Seeded, pure numpy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

NUM_FRAMES = 9
SIZE = 32
# Supersampling factor for anti-aliased edges: smooth edges are easier for the VAE to reproduce exactly.
_SUPERSAMPLE = 4
# Shape extent in pixels and travel per frame; large shapes keep their outline after 2x VAE compression.
SIZE_RANGE = (11.0, 15.0)
SPEED_RANGE = (1.0, 1.5)
_MARGIN = 1.0

# Combinations never shown in training: each still has its colour-shape, colour-direction and
# shape-direction pairs in the training set, so the model can only get them right by composing words.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "up"),
    ("green", "triangle", "left"),
    ("blue", "square", "down"),
    ("yellow", "circle", "right"),
    ("red", "triangle", "down"),
    ("blue", "triangle", "right"),
)


@dataclass(frozen=True)
class ClipSpec:
    colour: str
    shape: str
    direction: str
    size: float  # side, diameter or triangle base/height, in pixels
    speed: float  # pixels per frame
    start: tuple[float, float]  # centre (x, y) in frame 0
    wrap: bool = False  # the frame is a torus: what leaves one edge enters at the opposite one

    @property
    def prompt(self) -> str:
        return prompt_for(self.colour, self.shape, self.direction)


def prompt_for(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def all_combos() -> list[tuple[str, str, str]]:
    return list(itertools.product(COLOURS, SHAPES, DIRECTIONS))


def training_combos() -> list[tuple[str, str, str]]:
    held = set(HELD_OUT)
    return [c for c in all_combos() if c not in held]


def sample_spec(
    rng: np.random.Generator,
    combos: list[tuple[str, str, str]] | None = None,
    frames: int = NUM_FRAMES,
    wrap: bool = False,
) -> ClipSpec:
    """Draw a random clip of `frames` frames: wrapping from anywhere, or with the shape fully inside the frame for
    all frames."""
    combos = combos or training_combos()
    colour, shape, direction = combos[rng.integers(len(combos))]
    size = float(rng.uniform(*SIZE_RANGE))
    speed = float(rng.uniform(*SPEED_RANGE))
    if wrap:
        return ClipSpec(
            colour, shape, direction, size, speed, (float(rng.uniform(0, SIZE)), float(rng.uniform(0, SIZE))), True
        )
    travel = speed * (frames - 1)
    half = size / 2 + _MARGIN
    dx, dy = DIRECTIONS[direction]
    lo, hi = half, SIZE - half
    # Along the motion axis the start leaves room for the whole travel; across it anywhere fits.
    along = float(rng.uniform(lo, hi - travel))
    if dx < 0 or dy < 0:
        along = SIZE - along
    across = float(rng.uniform(lo, hi))
    start = (along, across) if dx else (across, along)
    return ClipSpec(colour, shape, direction, size, speed, start)


def _coverage(shape: str, cx: float, cy: float, size: float, grid: np.ndarray) -> np.ndarray:
    """Fraction of each pixel covered by the shape, from a supersampled inside test."""
    ys, xs = grid
    h = size / 2
    if shape == "square":
        inside = (np.abs(xs - cx) <= h) & (np.abs(ys - cy) <= h)
    elif shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= h * h
    elif shape == "triangle":
        # Apex up, base down; the half-width grows linearly from apex to base.
        t = (ys - (cy - h)) / size
        inside = (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= t * h)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    s = _SUPERSAMPLE
    return inside.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))


_GRID = np.meshgrid(
    (np.arange(SIZE * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE,
    (np.arange(SIZE * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE,
    indexing="ij",
)


def _wrapped_coverage(shape: str, cx: float, cy: float, size: float) -> np.ndarray:
    """Coverage on a torus: the shape centred in its own period, plus the copies one frame width away."""
    cx, cy = cx % SIZE, cy % SIZE
    offsets = (-SIZE, 0, SIZE)
    cover = sum(_coverage(shape, cx + ox, cy + oy, size, _GRID) for ox in offsets for oy in offsets)
    return np.minimum(cover, 1.0)


def render(spec: ClipSpec, frames: int = NUM_FRAMES) -> np.ndarray:
    """The clip's first `frames` frames as uint8 frames × height × width × 3."""
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float32)
    dx, dy = DIRECTIONS[spec.direction]
    out = np.empty((frames, SIZE, SIZE, 3), dtype=np.uint8)
    for f in range(frames):
        cx = spec.start[0] + dx * spec.speed * f
        cy = spec.start[1] + dy * spec.speed * f
        if spec.wrap:
            cover = _wrapped_coverage(spec.shape, cx, cy, spec.size)
        else:
            cover = _coverage(spec.shape, cx, cy, spec.size, _GRID)
        out[f] = np.round(cover[..., None] * colour).astype(np.uint8)
    return out


def batch(
    rng: np.random.Generator,
    n: int,
    combos: list[tuple[str, str, str]] | None = None,
    frames: int = NUM_FRAMES,
    wrap: bool = False,
) -> tuple[np.ndarray, list[ClipSpec]]:
    """`n` random clips as float32 n × 3 × frames × H × W in [-1, 1] (the VAE's layout) and their specs."""
    specs = [sample_spec(rng, combos, frames, wrap) for _ in range(n)]
    video = np.stack([render(s, frames) for s in specs]).astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)), specs
