"""Long requests are resolved and validated by the registry: the native window, the long limit, `long_video`
settings with the family's defaults, and per-segment prompts, each bad value named by its field."""

from __future__ import annotations

import pytest

from engine.registry import ModelRegistry
from engine.request import InvalidRequest, LongVideo


@pytest.fixture(scope="module")
def shapes():
    """The demo model's entry: native window 17 frames, long limit 161 (20 s at 8 fps)."""
    return ModelRegistry.from_file().get("vidserve-shapes")


def test_every_registered_model_serves_at_least_20_seconds_at_its_fps():
    for spec in ModelRegistry.from_file():
        assert spec.max_long_frames >= 20 * spec.defaults.fps + 1 > spec.window_frames


def test_models_list_shows_the_native_window_the_long_limit_and_the_long_video_defaults(shapes):
    shown = shapes.public_dict()
    assert shown["limits"]["window_frames"] == shown["limits"]["max_frames"] == 17
    assert shown["limits"]["max_long_frames"] == 161
    assert shown["long_video"] == {"method": "windows", "overlap": 8, "context_frames": 8, "color_match": 0.0}


def test_a_request_within_the_window_stays_ordinary(shapes):
    request = shapes.resolve("r", {"prompt": "a red square moving right", "num_frames": 17})
    assert request.long_video is None and request.segments == () and not request.is_long


def test_a_request_longer_than_the_window_gets_the_models_long_video_defaults(shapes):
    request = shapes.resolve("r", {"prompt": "a red square moving right", "num_frames": 161})
    assert request.long_video == LongVideo(method="windows", overlap=8, context_frames=8)
    assert request.is_long


def test_settings_left_out_take_the_default_and_named_ones_are_kept(shapes):
    params = {"prompt": "p", "num_frames": 81, "long_video": {"method": "continuation", "color_match": 0.25}}
    long_video = shapes.resolve("r", params).long_video
    assert long_video == LongVideo(method="continuation", overlap=8, context_frames=8, color_match=0.25)
    assert long_video.as_dict()["color_match"] == 0.25


def test_segments_resolve_to_ascending_from_frame_and_prompt_pairs(shapes):
    params = {
        "prompt": "a red square moving right",
        "num_frames": 81,
        "segments": [{"prompt": "a red square moving up", "from_frame": 40}, {"from_frame": 60, "prompt": "x"}],
    }
    assert shapes.resolve("r", params).segments == ((40, "a red square moving up"), (60, "x"))


INVALID = [
    ({"num_frames": 165}, "num_frames"),  # over the long limit
    ({"num_frames": 83}, "num_frames"),  # not 4k+1
    ({"long_video": "windows"}, "long_video"),
    ({"long_video": {"method": "stretch"}}, "long_video.method"),
    ({"long_video": {"overlap": 6}}, "long_video.overlap"),  # not a multiple of 4
    ({"long_video": {"overlap": 16}}, "long_video.overlap"),  # leaves no new frame in a 17-frame window
    ({"long_video": {"context_frames": 0}}, "long_video.context_frames"),
    ({"long_video": {"color_match": 2}}, "long_video.color_match"),
    ({"long_video": {"color_match": 0.5}}, "long_video.color_match"),  # windows have no chunks to match
    ({"long_video": {"frames": 3}}, "long_video.frames"),
    ({"segments": []}, "segments"),
    ({"segments": [{"prompt": "a", "from_frame": 81}]}, "segments[0].from_frame"),
    ({"segments": [{"prompt": "", "from_frame": 0}]}, "segments[0].prompt"),
    ({"segments": [{"prompt": "a", "from_frame": 9}, {"prompt": "b", "from_frame": 9}]}, "segments[1].from_frame"),
    ({"segments": [{"prompt": "a", "from_frame": 9, "seed": 1}]}, "segments[0]"),
]


@pytest.mark.parametrize(("change", "field"), INVALID)
def test_a_bad_long_request_is_refused_naming_the_field(shapes, change, field):
    with pytest.raises(InvalidRequest) as error:
        shapes.resolve("r", {"prompt": "p", "num_frames": 81, **change})
    assert error.value.field == field


def test_continuing_a_finished_video_runs_as_continuation_and_refuses_windows(shapes):
    context = object()  # the registry only carries it; the engine checks its shape
    request = shapes.resolve("r", {"prompt": "p", "num_frames": 17}, context=context)
    assert request.long_video.method == "continuation" and request.context is context
    with pytest.raises(InvalidRequest) as error:
        shapes.resolve("r", {"prompt": "p", "long_video": {"method": "windows"}}, context=context)
    assert error.value.field == "long_video.method"


def test_the_engines_guard_refuses_a_long_request_without_settings(shapes):
    from dataclasses import replace

    request = replace(shapes.resolve("r", {"prompt": "p", "num_frames": 81}), long_video=None)
    with pytest.raises(InvalidRequest) as error:
        shapes.check_request(request)
    assert error.value.field == "num_frames"
