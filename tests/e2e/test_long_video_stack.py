"""Long videos and extensions on the real services: HTTP submit -> Postgres -> Celery/Redis -> worker -> engine
-> MP4 in S3, through vidserve's own API and the `openai` SDK's `videos.extend`."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import requests
from service_harness import GATED_JOB, SERVED_MODEL, Stack, wait_until

from worker.step_gate import StepGate
from worker.video import decode_mp4

TERMINAL = {"succeeded", "failed", "canceled"}


def post(stack: Stack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{stack.api_url}{path}", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()


def finished(stack: Stack, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = requests.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in TERMINAL else None

    return wait_until(done, timeout, interval=0.2, what=f"job {job_id} to finish")


def video_frames(job: dict[str, Any]) -> Any:
    download = requests.get(job["output"]["url"], timeout=30)
    assert download.status_code == 200
    return decode_mp4(download.content)


def test_a_20_second_request_becomes_an_mp4_with_every_frame(stack: Stack) -> None:
    body = {"model": SERVED_MODEL, "prompt": "a red square moving right", "num_frames": 161, "seed": 1}
    job = post(stack, "/v1/jobs", {**body, "num_inference_steps": 2})

    done = finished(stack, job["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["output"]["num_frames"] == 161 and done["params"]["long_video"]["method"]
    assert video_frames(done).shape == (161, 32, 32, 3)
    assert stack.videos.get(stack.videos.latents_key_for(job["id"]))  # kept for an extension


def test_extend_over_http_continues_a_finished_job(stack: Stack) -> None:
    source = post(stack, "/v1/jobs", {"model": SERVED_MODEL, "prompt": "a blue circle", "num_frames": 17, "seed": 2})
    assert finished(stack, source["id"])["status"] == "succeeded"

    new_only = post(stack, f"/v1/jobs/{source['id']}/extend", {"prompt": "it moves up", "num_frames": 33})
    with_original = post(
        stack, f"/v1/jobs/{source['id']}/extend", {"prompt": "it moves up", "num_frames": 33, "include_original": True}
    )

    done = finished(stack, new_only["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["params"]["long_video"]["method"] == "continuation"
    assert video_frames(done).shape == (33, 32, 32, 3)
    both = finished(stack, with_original["id"])
    assert both["status"] == "succeeded", both["error"]
    assert video_frames(both).shape == (17 + 33, 32, 32, 3)


def test_extend_of_an_unfinished_job_is_a_409_and_of_an_unknown_one_a_404(stack: Stack, gated_jobs: StepGate) -> None:
    running = post(stack, "/v1/jobs", GATED_JOB)  # held at the step gate, never released: unfinished

    unfinished = requests.post(f"{stack.api_url}/v1/jobs/{running['id']}/extend", json={"prompt": "x"}, timeout=10)
    unknown = requests.post(
        f"{stack.api_url}/v1/jobs/00000000-0000-4000-8000-000000000000/extend", json={"prompt": "x"}, timeout=10
    )

    assert unfinished.status_code == 409 and unfinished.json()["error"]["code"] == "job_not_succeeded"
    assert unknown.status_code == 404


def sdk_extend(sdk: openai.OpenAI, video_id: str, prompt: str, seconds: str) -> Any:
    """`sdk.videos.extend(prompt, seconds, video={"id": video_id})` as the SDK sends it. The SDK (3.63) refuses
    that very call before sending (it checks `video` as a file upload), so the reference goes in `extra_body`:
    the request is the same multipart form, with the field `video[id]`."""
    return sdk.videos.extend(prompt=prompt, seconds=seconds, video=openai.omit, extra_body={"video": {"id": video_id}})


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="not-checked", max_retries=0, timeout=30)


def test_extend_with_the_openai_sdk(sdk: openai.OpenAI) -> None:
    video = sdk.videos.create(model=SERVED_MODEL, prompt="a yellow triangle moving left", seconds="1")
    assert sdk.videos.poll(video.id, poll_interval_ms=200).status == "completed"

    extension = sdk_extend(sdk, video.id, "it keeps moving left", "4")

    assert extension.object == "video" and extension.id != video.id and extension.seconds == "4.125"
    done = sdk.videos.poll(extension.id, poll_interval_ms=200)
    assert done.status == "completed", done.error
    assert decode_mp4(sdk.videos.download_content(extension.id).content).shape == (33, 32, 32, 3)


def test_openai_sdk_extend_of_a_bad_reference_raises(sdk: openai.OpenAI, stack: Stack, gated_jobs: StepGate) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk_extend(sdk, "00000000-0000-4000-8000-000000000000", "x", "4")
    held = post(stack, "/v1/jobs", GATED_JOB)  # held at the step gate, never released: unfinished
    with pytest.raises(openai.ConflictError) as caught:
        sdk_extend(sdk, held["id"], "x", "4")
    assert caught.value.body["param"] == "video"
