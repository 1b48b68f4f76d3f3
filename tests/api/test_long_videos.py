"""Long videos at the API: `num_frames` beyond the native window up to the model's long-video limit, the
`long_video` object and per-segment prompts; bad values are 422 naming the (nested) field; `/v1/models` shows
each model's window and limit; the OpenAI-shaped create takes `seconds` up to 20.

The API tests' registry gives tiny-wan a window of 33 frames and a limit of 161 (20 s at 8 fps); tiny-ltx has
no long-video limit, so its longest video is its window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

Submit = Callable[..., dict[str, Any]]  # tests/api/conftest.py's `submit`
FOX = "a red fox running through snow"


def error(response: Any) -> dict[str, Any]:
    return response.get_json()["error"]


def test_a_request_beyond_the_window_is_accepted_with_the_models_long_video_settings_recorded(
    client: FlaskClient,
) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["data"]}

    response = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX, "num_frames": 161})

    assert response.status_code == 202, response.get_json()
    params = response.get_json()["params"]
    assert params["num_frames"] == 161
    assert params["long_video"] == models["tiny-wan"]["long_video"]
    assert "segments" not in params


def test_an_ordinary_request_records_no_long_video_settings(submit: Submit) -> None:
    params = submit(num_frames=33)["params"]
    assert "long_video" not in params and "segments" not in params


def test_long_video_settings_left_out_take_the_models_defaults(client: FlaskClient) -> None:
    body = {"model": "tiny-wan", "prompt": FOX, "num_frames": 65, "long_video": {"method": "continuation"}}

    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 202, response.get_json()
    recorded = response.get_json()["params"]["long_video"]
    defaults = next(m for m in client.get("/v1/models").get_json()["data"] if m["name"] == "tiny-wan")["long_video"]
    assert recorded == {**defaults, "method": "continuation"}


def test_segments_are_recorded_as_given(client: FlaskClient) -> None:
    segments = [{"prompt": "it stops", "from_frame": 40}, {"prompt": "it turns left", "from_frame": 80}]
    body = {"model": "tiny-wan", "prompt": FOX, "num_frames": 121, "segments": segments}

    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["params"]["segments"] == segments


def test_models_show_their_native_window_and_long_video_limit(client: FlaskClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["data"]}

    wan, ltx = models["tiny-wan"], models["tiny-ltx"]
    assert (wan["limits"]["window_frames"], wan["limits"]["max_long_frames"]) == (33, 161)
    assert (ltx["limits"]["window_frames"], ltx["limits"]["max_long_frames"]) == (33, 33)
    assert wan["long_video"]["method"] in ("windows", "continuation")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"num_frames": 165}, "num_frames"),  # past tiny-wan's limit of 161
        ({"num_frames": 63}, "num_frames"),  # not 4k+1
        ({"model": "tiny-ltx", "num_frames": 41}, "num_frames"),  # tiny-ltx has no long videos
        ({"long_video": "windows"}, "long_video"),
        ({"long_video": ["windows"]}, "long_video"),
        ({"long_video": {"method": "stretch"}}, "long_video.method"),
        ({"long_video": {"method": 1}}, "long_video.method"),
        ({"long_video": {"overlap": 6}}, "long_video.overlap"),  # not a multiple of 4
        ({"long_video": {"overlap": 32}}, "long_video.overlap"),  # leaves no new frame per window
        ({"long_video": {"overlap": "8"}}, "long_video.overlap"),
        ({"long_video": {"context_frames": 0}}, "long_video.context_frames"),
        ({"long_video": {"method": "continuation", "color_match": 2}}, "long_video.color_match"),
        ({"long_video": {"method": "windows", "color_match": 0.5}}, "long_video.color_match"),
        ({"long_video": {"speed": 2}}, "long_video.speed"),
        ({"segments": {"prompt": "x", "from_frame": 0}}, "segments"),
        ({"segments": []}, "segments"),
        ({"segments": ["it turns"]}, "segments[0]"),
        ({"segments": [{"prompt": "x", "from_frame": 0, "weight": 1}]}, "segments[0]"),
        ({"segments": [{"prompt": " ", "from_frame": 0}]}, "segments[0].prompt"),
        ({"segments": [{"prompt": "x\x00", "from_frame": 0}]}, "segments[0].prompt"),
        ({"segments": [{"prompt": "x\x1b[2J", "from_frame": 0}]}, "segments[0].prompt"),
        ({"segments": [{"prompt": "x", "from_frame": 161}]}, "segments[0].from_frame"),  # num_frames is 161
        ({"segments": [{"prompt": "x", "from_frame": -1}]}, "segments[0].from_frame"),
        (
            {"segments": [{"prompt": "a", "from_frame": 40}, {"prompt": "b", "from_frame": 40}]},
            "segments[1].from_frame",
        ),
    ],
)
def test_bad_long_video_fields_are_422_naming_the_field(
    client: FlaskClient, count_jobs: Any, fields: dict[str, Any], field: str
) -> None:
    before = count_jobs()
    body = {"model": "tiny-wan", "prompt": FOX, "num_frames": 161, **fields}

    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 422, response.get_json()
    assert error(response)["code"] == "invalid_field" and error(response)["field"] == field
    assert error(response)["rule"]
    assert count_jobs() == before


# ---- OpenAI-shaped create: seconds up to 20 ---------------------------------------------------------------


def test_openai_create_makes_a_20_second_video(client: FlaskClient) -> None:
    response = client.post("/v1/videos", json={"model": "tiny-wan", "prompt": FOX, "seconds": "20"})

    assert response.status_code == 200, response.get_json()
    video = response.get_json()
    assert video["seconds"] == "20.125"  # 161 frames at 8 fps
    params = client.get(f"/v1/jobs/{video['id']}").get_json()["params"]
    assert params["num_frames"] == 161 and params["long_video"]["method"] in ("windows", "continuation")


@pytest.mark.parametrize(("model", "seconds"), [("tiny-wan", "21"), ("tiny-ltx", "5")])
def test_openai_create_longer_than_the_model_makes_is_a_400_naming_seconds(
    client: FlaskClient, model: str, seconds: str
) -> None:
    response = client.post("/v1/videos", json={"model": model, "prompt": FOX, "seconds": seconds})

    assert response.status_code == 400
    body = response.get_json()["error"]
    assert body["param"] == "seconds" and "at most" in body["message"]
