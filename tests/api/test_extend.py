"""Extending a finished video: `POST /v1/jobs/{id}/extend` and the OpenAI-shaped `POST /v1/videos/extensions`.

The source jobs are real rows moved through the job store as a worker moves them (claim, succeed); the new
job's message is read back from the API tests' Redis queue. Bad references answer 4xx naming what is wrong.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from vidserve.jobs import JobStore
from vidserve.settings import Settings
from vidserve.storage import VideoStore

Submit = Callable[..., dict[str, Any]]  # tests/api/conftest.py's `submit`
MakeKey = Callable[..., Any]  # tests/api/conftest.py's `make_key`


@pytest.fixture
def store(api_settings: Settings) -> JobStore:
    return JobStore(api_settings.database_url, view=dict)


def finish(store: JobStore, job_id: str, keep_latents: bool = True) -> None:
    """Move a queued job to succeeded as a worker does, with or without kept latents in its output."""
    assert store.claim(job_id, "test-worker", 60) is not None
    output: dict[str, Any] = {"key": VideoStore.key_for(job_id), "num_frames": 9}
    if keep_latents:
        output["latents_key"] = VideoStore.latents_key_for(job_id)
    assert store.succeed(job_id, "test-worker", output, None) is not None


def succeeded_job(submit: Submit, store: JobStore, **fields: Any) -> dict[str, Any]:
    job = submit(**fields)
    finish(store, job["id"])
    return job


def test_extend_makes_a_queued_job_that_continues_the_source_with_its_size_and_rate(
    client: FlaskClient, submit: Submit, store: JobStore, broker: Any
) -> None:
    source = succeeded_job(submit, store, height=48, width=64, fps=12, num_inference_steps=6, guidance_scale=3.5)

    response = client.post(f"/v1/jobs/{source['id']}/extend", json={"prompt": "then it turns left", "num_frames": 17})

    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["model"] == source["model"] and job["id"] != source["id"]
    params = job["params"]
    assert params["prompt"] == "then it turns left" and params["num_frames"] == 17
    assert (params["height"], params["width"], params["fps"]) == (48, 64, 12)
    # Steps and guidance carry over unless the extension names them; the seed is its own.
    assert (params["num_inference_steps"], params["guidance_scale"]) == (6, 3.5)
    assert params["extends"] == {"job_id": source["id"], "include_original": False}
    assert broker.find(f"gen.{job['model']}", job["id"]) is not None


def test_extend_takes_its_own_steps_and_can_include_the_original(
    client: FlaskClient, submit: Submit, store: JobStore
) -> None:
    source = succeeded_job(submit, store)
    body = {"prompt": "more", "num_inference_steps": 2, "seed": 5, "include_original": True}

    response = client.post(f"/v1/jobs/{source['id']}/extend", json=body)

    assert response.status_code == 202, response.get_json()
    params = response.get_json()["params"]
    assert params["num_inference_steps"] == 2 and params["seed"] == 5
    assert params["extends"] == {"job_id": source["id"], "include_original": True}


def error(response: Any) -> dict[str, Any]:
    return response.get_json()["error"]


def test_extend_of_an_unknown_or_malformed_id_is_a_404(client: FlaskClient) -> None:
    for job_id in (uuid.uuid4(), "not-a-uuid"):
        response = client.post(f"/v1/jobs/{job_id}/extend", json={"prompt": "more"})
        assert response.status_code == 404 and error(response)["code"] == "job_not_found"


def test_extend_of_an_unfinished_job_is_a_409(client: FlaskClient, submit: Submit, store: JobStore) -> None:
    queued = submit()
    running = submit()
    store.claim(running["id"], "test-worker", 60)

    for job in (queued, running):
        response = client.post(f"/v1/jobs/{job['id']}/extend", json={"prompt": "more"})
        assert response.status_code == 409 and error(response)["code"] == "job_not_succeeded"
        assert "succeeded" in error(response)["message"]


def test_extend_of_a_failed_job_is_a_409(client: FlaskClient, submit: Submit, store: JobStore) -> None:
    job = submit()
    store.fail(job["id"], "engine_error", "boom")

    response = client.post(f"/v1/jobs/{job['id']}/extend", json={"prompt": "more"})

    assert response.status_code == 409 and error(response)["code"] == "job_not_succeeded"


def test_extend_of_a_job_without_kept_latents_is_a_409(client: FlaskClient, submit: Submit, store: JobStore) -> None:
    job = submit()
    finish(store, job["id"], keep_latents=False)

    response = client.post(f"/v1/jobs/{job['id']}/extend", json={"prompt": "more"})

    assert response.status_code == 409 and error(response)["code"] == "latents_unavailable"
    assert "latents" in error(response)["message"]


def test_extend_of_another_keys_job_is_a_404(auth_client: FlaskClient, make_key: MakeKey, store: JobStore) -> None:
    owner, other = make_key(), make_key()
    created = auth_client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "mine"}, headers=owner.headers)
    job_id = created.get_json()["id"]
    finish(store, job_id)

    theirs = auth_client.post(f"/v1/jobs/{job_id}/extend", json={"prompt": "more"}, headers=other.headers)
    mine = auth_client.post(f"/v1/jobs/{job_id}/extend", json={"prompt": "more"}, headers=owner.headers)

    assert theirs.status_code == 404 and error(theirs)["code"] == "job_not_found"
    assert mine.status_code == 202


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "more", "height": 64}, "height"),
        ({"prompt": "more", "width": 64}, "width"),
        ({"prompt": "more", "fps": 24}, "fps"),
        ({"prompt": "more", "model": "tiny-ltx"}, "model"),
        ({"prompt": "more", "include_original": "yes"}, "include_original"),
        ({"prompt": "more", "colour": "red"}, "colour"),
        ({"num_frames": 9}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "more", "num_frames": 10}, "num_frames"),
        ({"prompt": "more", "num_frames": 100_000}, "num_frames"),
        ({"prompt": "more", "num_inference_steps": 0}, "num_inference_steps"),
    ],
)
def test_a_bad_extension_body_is_a_422_naming_the_field(
    client: FlaskClient, submit: Submit, store: JobStore, count_jobs: Any, body: dict[str, Any], field: str
) -> None:
    source = succeeded_job(submit, store)
    before = count_jobs()

    response = client.post(f"/v1/jobs/{source['id']}/extend", json=body)

    assert response.status_code == 422, response.get_json()
    assert error(response)["code"] == "invalid_field" and error(response)["field"] == field
    assert count_jobs() == before


def test_an_extension_body_that_is_not_a_json_object_is_a_400(
    client: FlaskClient, submit: Submit, store: JobStore
) -> None:
    source = succeeded_job(submit, store)

    response = client.post(f"/v1/jobs/{source['id']}/extend", data="[1]", content_type="application/json")

    assert response.status_code == 400 and error(response)["code"] == "malformed_body"


# ---- OpenAI-shaped: POST /v1/videos/extensions ----------------------------------------------------------


def test_openai_extension_from_the_sdks_multipart_form(client: FlaskClient, submit: Submit, store: JobStore) -> None:
    source = succeeded_job(submit, store, fps=8)

    # What `client.videos.extend(prompt=..., seconds="4", video={"id": ...})` sends.
    form = {"prompt": "and then it jumps", "seconds": "4", "video[id]": source["id"]}
    response = client.post("/v1/videos/extensions", data=form, content_type="multipart/form-data")

    assert response.status_code == 200, response.get_json()
    video = response.get_json()
    assert video["object"] == "video" and video["status"] == "queued" and video["prompt"] == "and then it jumps"
    # tiny-wan at 8 fps: 4 s is 32 frames, nearest 4k+1 is 33.
    assert video["seconds"] == "4.125" and video["size"] == "32x32"
    job = client.get(f"/v1/jobs/{video['id']}").get_json()
    assert job["params"]["num_frames"] == 33 and job["params"]["extends"]["job_id"] == source["id"]


def test_openai_extension_as_json(client: FlaskClient, submit: Submit, store: JobStore) -> None:
    source = succeeded_job(submit, store)

    body = {"prompt": "more", "seconds": "1", "video": {"id": source["id"]}}
    response = client.post("/v1/videos/extensions", json=body)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["seconds"] == "1.125"


def openai_error(response: Any) -> dict[str, Any]:
    body = response.get_json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def test_openai_extension_bad_references_are_4xx_naming_video(
    client: FlaskClient, submit: Submit, store: JobStore
) -> None:
    unfinished = submit()
    no_latents = submit()
    finish(store, no_latents["id"], keep_latents=False)
    cases = [(str(uuid.uuid4()), 404, "not_found"), (unfinished["id"], 409, "job_not_succeeded")]
    cases.append((no_latents["id"], 409, "latents_unavailable"))

    for video_id, status, code in cases:
        response = client.post("/v1/videos/extensions", json={"prompt": "x", "seconds": "1", "video": {"id": video_id}})
        assert response.status_code == status, response.get_json()
        assert openai_error(response)["param"] == "video" and openai_error(response)["code"] == code


def test_openai_extension_of_another_keys_video_is_a_404(
    auth_client: FlaskClient, make_key: MakeKey, store: JobStore
) -> None:
    owner, other = make_key(), make_key()
    created = auth_client.post("/v1/videos", json={"model": "tiny-wan", "prompt": "mine"}, headers=owner.headers)
    video_id = created.get_json()["id"]
    finish(store, video_id)
    body = {"prompt": "more", "seconds": "1", "video": {"id": video_id}}

    response = auth_client.post("/v1/videos/extensions", json=body, headers=other.headers)

    assert response.status_code == 404 and openai_error(response)["param"] == "video"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"seconds": "1"}, "prompt"),
        ({"prompt": "x"}, "seconds"),
        ({"prompt": "x", "seconds": "soon"}, "seconds"),
        ({"prompt": "x", "seconds": "3600"}, "seconds"),
        ({"prompt": "x", "seconds": "1", "video": "an-id"}, "video"),
        ({"prompt": "x", "seconds": "1", "video": {"url": "https://example.com/v.mp4"}}, "video"),
        ({"prompt": "x", "seconds": "1", "size": "32x32"}, "size"),
        ({"prompt": "x\x00", "seconds": "1"}, "prompt"),
    ],
)
def test_openai_extension_bad_values_are_400_naming_the_param(
    client: FlaskClient, submit: Submit, store: JobStore, body: dict[str, Any], param: str
) -> None:
    source = succeeded_job(submit, store)
    body = {"video": {"id": source["id"]}, **body}

    response = client.post("/v1/videos/extensions", json=body)

    assert response.status_code == 400, response.get_json()
    assert openai_error(response)["param"] == param


def test_options_on_the_extensions_path_advertises_only_post(client: FlaskClient) -> None:
    # The path also matches /v1/videos/{video_id}, whose GET and DELETE are not this resource's.
    response = client.options("/v1/videos/extensions")

    assert response.status_code == 200
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"OPTIONS", "POST"}


def test_deleting_a_video_deletes_its_kept_latents_too(
    client: FlaskClient, submit: Submit, store: JobStore, api_settings: Settings
) -> None:
    videos = VideoStore(api_settings)
    job = succeeded_job(submit, store)
    mp4, latents = VideoStore.key_for(job["id"]), VideoStore.latents_key_for(job["id"])
    videos.put(mp4, b"mp4 bytes")
    videos.put(latents, b"latents bytes", "application/octet-stream")

    assert client.delete(f"/v1/videos/{job['id']}").status_code == 200

    assert videos.get_if_exists(mp4) is None and videos.get_if_exists(latents) is None


def test_an_extension_takes_a_priority_and_high_needs_the_priority_scope(
    auth_client: FlaskClient, make_key: MakeKey, store: JobStore
) -> None:
    plain, trusted = make_key(), make_key("jobs:read", "jobs:write", "jobs:priority")
    created = auth_client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "mine"}, headers=trusted.headers)
    job_id = created.get_json()["id"]
    finish(store, job_id)
    path = f"/v1/jobs/{job_id}/extend"

    low = auth_client.post(path, json={"prompt": "more", "priority": "low"}, headers=trusted.headers)
    high = auth_client.post(path, json={"prompt": "more", "priority": "high"}, headers=trusted.headers)

    assert low.status_code == 202 and low.get_json()["priority"] == "low"
    assert high.status_code == 202 and high.get_json()["priority"] == "high"
    plain_job = auth_client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": "x"}, headers=plain.headers)
    plain_id = plain_job.get_json()["id"]
    finish(store, plain_id)
    body = {"prompt": "more", "priority": "high"}
    refused = auth_client.post(f"/v1/jobs/{plain_id}/extend", json=body, headers=plain.headers)
    assert refused.status_code == 403 and error(refused)["field"] == "priority"
