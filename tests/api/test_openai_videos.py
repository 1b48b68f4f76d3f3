"""The OpenAI-compatible Videos API, driven by the official `openai` SDK against a real API and worker.

Create, poll, download, list and delete go through `openai.OpenAI(base_url=.../v1)`; the same jobs are
visible in vidserve's own `/v1/jobs`. Bad requests answer 400 in OpenAI's error shape.
"""

from __future__ import annotations

import io

import openai
import pytest
import requests
from service_harness import GATED_JOB, GATED_STEPS, SERVED_MODEL, Stack, held_at_gate, wait_until

from worker.step_gate import StepGate
from worker.video import decode_mp4


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="not-checked", max_retries=0, timeout=30)


def test_create_poll_download_list_and_delete_with_the_openai_sdk(sdk: openai.OpenAI, stack: Stack) -> None:
    # tiny-wan makes 4k+1 frames at 8 fps: 1 second is 8 frames, whose nearest such count is 9.
    video = sdk.videos.create(model=SERVED_MODEL, prompt="a paper boat on a pond", seconds="1", size="48x32")
    assert video.object == "video" and video.status in ("queued", "in_progress")
    assert video.size == "48x32" and video.seconds == "1.125" and video.progress == 0

    done = sdk.videos.poll(video.id, poll_interval_ms=200)
    assert done.status == "completed" and done.progress == 100, done
    assert done.completed_at is not None and done.completed_at >= done.created_at

    content = sdk.videos.download_content(video.id)
    assert decode_mp4(content.content).shape == (9, 32, 48, 3)

    # The same job through vidserve's own API.
    job = requests.get(f"{stack.api_url}/v1/jobs/{video.id}", timeout=10).json()
    assert job["status"] == "succeeded" and job["params"]["num_frames"] == 9 and job["params"]["width"] == 48

    listed = sdk.videos.list(limit=100)
    assert video.id in [v.id for v in listed.data]
    assert all(v.object == "video" for v in listed.data)

    deleted = sdk.videos.delete(video.id)
    assert deleted.deleted is True and deleted.id == video.id and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video.id)
    assert requests.get(f"{stack.api_url}/v1/jobs/{video.id}", timeout=10).status_code == 404


def test_list_pages_with_after_and_order(sdk: openai.OpenAI) -> None:
    made = [sdk.videos.create(model=SERVED_MODEL, prompt=f"page {i}").id for i in range(3)]
    newest_first = [v.id for v in sdk.videos.list(limit=100).data]
    assert newest_first[:3] == made[::-1]
    first = sdk.videos.list(limit=1)
    assert [v.id for v in first.data] == [made[2]] and first.has_more
    second = sdk.videos.list(limit=1, after=made[2])
    assert [v.id for v in second.data] == [made[1]]
    # The SDK's auto-pager follows last_id through every page.
    assert [v.id for v in sdk.videos.list(limit=1)][:3] == made[::-1]
    oldest_first = [v.id for v in sdk.videos.list(limit=100, order="asc").data]
    assert oldest_first == newest_first[::-1]


def test_delete_of_a_running_video_stops_it(sdk: openai.OpenAI, stack: Stack, gated_jobs: StepGate) -> None:
    video = sdk.videos.create(model=SERVED_MODEL, prompt="a short walk", seconds="1")
    # A job held at the step gate (never released), through the native API: running when the OpenAI DELETE comes.
    held = requests.post(f"{stack.api_url}/v1/jobs", json=GATED_JOB, timeout=10).json()
    wait_until(lambda: held_at_gate(stack.store, held["id"], GATED_STEPS), 60, 0.1, "the job held at the gate")
    running = sdk.videos.retrieve(held["id"])
    assert running.status == "in_progress" and 0 < running.progress < 100
    assert sdk.videos.delete(held["id"]).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(held["id"])
    # The worker notices at its next write that the job is gone and stops it, freeing its slot.
    lost = f"job {held['id']}: lease lost"
    wait_until(lambda: lost in stack.worker.log_tail(1_000_000), 30, 0.1, "the worker to stop the deleted job")
    assert sdk.videos.poll(video.id, poll_interval_ms=200).status == "completed"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seconds": "60"}, "seconds"),
        ({"seconds": "soon"}, "seconds"),
        ({"size": "33x32"}, "size"),
        ({"size": "big"}, "size"),
        ({"model": "sora-2"}, "model"),
    ],
)
def test_bad_requests_are_400_in_openai_error_shape(sdk: openai.OpenAI, fields: dict[str, str], param: str) -> None:
    body = {"model": SERVED_MODEL, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.videos.create(prompt="a cat", **body)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_content_of_an_unfinished_or_unknown_video(stack: Stack, sdk: openai.OpenAI) -> None:
    response = requests.get(f"{stack.api_url}/v1/videos/00000000-0000-0000-0000-000000000000/content", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        sdk.videos.create(prompt="x", input_reference=("ref.png", io.BytesIO(b"\x89PNG"), "image/png"))
    body = {"prompt": "a dog", "model": SERVED_MODEL}
    json_create = requests.post(f"{stack.api_url}/v1/videos", json=body, timeout=10)
    assert json_create.status_code == 200 and json_create.json()["object"] == "video"
