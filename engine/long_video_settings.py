"""A request's long-video settings and per-segment prompts: defaults per family, ranges, validation.

Torch-free, so the API validates `long_video` and `segments` with the same rules as the engine; the engine's
own work on long requests lives in `engine.long_video`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.request import CONTINUATION, LONG_VIDEO_METHODS, WINDOWS, InvalidRequest, LongVideo

MAX_SEGMENTS = 32
SETTINGS = ("method", "overlap", "context_frames", "color_match")
# Windowed co-denoising serves every family on its base weights; continuation is chosen per request.
FAMILY_METHOD = {"wan": WINDOWS, "cogvideox": WINDOWS, "mochi": WINDOWS, "hunyuanvideo": WINDOWS, "ltx": WINDOWS}


def default_long_video(family: str, window_frames: int, frame_multiple: int, overrides: dict[str, Any]) -> LongVideo:
    """The model's default: about a third of the window shared by windows (as ComfyUI's 81/30 for Wan), a quarter
    of it as continuation context, then the registry entry's `long_video` table over that."""
    largest = window_frames - 1 - frame_multiple
    third = min(largest, -(-window_frames // (3 * frame_multiple)) * frame_multiple)
    quarter = min(largest, -(-window_frames // (4 * frame_multiple)) * frame_multiple)
    base = LongVideo(method=FAMILY_METHOD.get(family, WINDOWS), overlap=third, context_frames=quarter)
    return parse_long_video(overrides, base, window_frames, frame_multiple) if overrides else base


def parse_long_video(value: Any, default: LongVideo, window_frames: int, frame_multiple: int) -> LongVideo:
    """Validate a request's `long_video` (an object; settings left out take the model's default).

    Raises `InvalidRequest("long_video", ...)` for the shape and `InvalidRequest("long_video.<setting>", ...)`
    for a setting out of range, of the wrong type, or unknown.
    """
    if isinstance(value, LongVideo):
        value = value.as_dict()
    if not isinstance(value, dict):
        raise InvalidRequest("long_video", 'must be an object such as {"method": "windows"}')
    unknown = sorted(set(value) - set(SETTINGS))
    if unknown:
        raise InvalidRequest(f"long_video.{unknown[0]}", f"unknown setting; known: {', '.join(SETTINGS)}")
    settings = replace(default)
    method = value.get("method", default.method)
    if not isinstance(method, str) or method not in LONG_VIDEO_METHODS:
        raise InvalidRequest("long_video.method", f"must be one of {', '.join(LONG_VIDEO_METHODS)}")
    # Both shares must leave at least one new latent frame per window or chunk.
    largest = window_frames - 1 - frame_multiple
    overlap = _frames(value, "overlap", default.overlap, frame_multiple, largest)
    context = _frames(value, "context_frames", default.context_frames, frame_multiple, largest)
    color = value.get("color_match", default.color_match)
    if isinstance(color, bool) or not isinstance(color, (int, float)) or not 0.0 <= float(color) <= 1.0:
        raise InvalidRequest("long_video.color_match", "must be a number between 0.0 and 1.0")
    if float(color) > 0 and method != CONTINUATION:
        raise InvalidRequest("long_video.color_match", "applies to the continuation method only")
    return replace(settings, method=method, overlap=overlap, context_frames=context, color_match=float(color))


def parse_segments(value: Any, num_frames: int, max_prompt_chars: int) -> tuple[tuple[int, str], ...]:
    """Validate `segments`: a list of {"prompt", "from_frame"} objects with strictly ascending from_frame."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidRequest("segments", 'must be a non-empty list of {"prompt": ..., "from_frame": ...} objects')
    if len(value) > MAX_SEGMENTS:
        raise InvalidRequest("segments", f"must hold at most {MAX_SEGMENTS} segments")
    segments: list[tuple[int, str]] = []
    for i, segment in enumerate(value):
        if isinstance(segment, (list, tuple)) and len(segment) == 2:  # an already-resolved (from_frame, prompt)
            segment = {"from_frame": segment[0], "prompt": segment[1]}
        if not isinstance(segment, dict) or set(segment) - {"prompt", "from_frame"}:
            raise InvalidRequest(f"segments[{i}]", 'must be an object with "prompt" and "from_frame" only')
        prompt, start = segment.get("prompt"), segment.get("from_frame")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > max_prompt_chars:
            raise InvalidRequest(
                f"segments[{i}].prompt", f"must be a non-empty string of at most {max_prompt_chars} characters"
            )
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < num_frames:
            raise InvalidRequest(f"segments[{i}].from_frame", f"must be an integer between 0 and {num_frames - 1}")
        if segments and start <= segments[-1][0]:
            raise InvalidRequest(f"segments[{i}].from_frame", "must be greater than the previous segment's")
        segments.append((start, prompt))
    return tuple(segments)


def prompt_at(prompt: str, segments: tuple[tuple[int, str], ...], frame: int) -> str:
    """The prompt that holds at pixel frame `frame`: the last segment starting at or before it, else `prompt`."""
    current = prompt
    for start, text in segments:
        if start > frame:
            break
        current = text
    return current


def _frames(value: dict[str, Any], name: str, default: int, multiple: int, largest: int) -> int:
    frames = value.get(name, default)
    if (
        isinstance(frames, bool)
        or not isinstance(frames, int)
        or frames % multiple
        or not multiple <= frames <= largest
    ):
        raise InvalidRequest(
            f"long_video.{name}", f"must be a multiple of {multiple} frames between {multiple} and {largest}"
        )
    return frames
