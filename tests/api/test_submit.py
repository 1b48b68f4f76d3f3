"""POST /v1/jobs: a valid job is stored, answered with 202 and published on its model's Celery queue.

Publishing is best effort: with Redis away the job is still accepted and left for the sweeper.
"""

from __future__ import annotations

import dataclasses
import uuid

from flask.testing import FlaskClient

from api.app import create_app
from vidserve.jobs import JobStore
from vidserve.settings import Settings

FOX = "a red fox running through snow"


def test_submit_answers_202_with_the_queued_job_and_its_location(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX})

    assert response.status_code == 202
    job = response.get_json()
    assert uuid.UUID(job["id"])
    assert job["status"] == "queued"
    assert job["model"] == "tiny-wan"
    assert job["progress"] == 0
    assert job["attempts"] == 0
    assert job["error"] is None and job["output"] is None
    assert job["created_at"] and job["started_at"] is None and job["finished_at"] is None
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert client.get(response.headers["Location"]).get_json()["id"] == job["id"]


def test_submit_publishes_a_wake_up_naming_job_and_model_on_its_queue(client: FlaskClient, broker) -> None:
    wan = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX}).get_json()
    ltx = client.post("/v1/jobs", json={"model": "tiny-ltx", "prompt": FOX}).get_json()

    assert broker.find("gen.tiny-wan", wan["id"]) == {"task": "worker.tasks.generate", "args": [wan["id"], "tiny-wan"]}
    assert broker.find("gen.tiny-ltx", ltx["id"]) == {"task": "worker.tasks.generate", "args": [ltx["id"], "tiny-ltx"]}
    assert broker.find("gen.tiny-wan", ltx["id"]) is None


def test_submit_marks_the_job_published(client: FlaskClient, api_settings: Settings) -> None:
    job = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX}).get_json()

    assert JobStore(api_settings.database_url, view=dict).get(job["id"]).published_at is not None


def test_submit_applies_the_models_defaults(client: FlaskClient) -> None:
    job = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX}).get_json()

    params = job["params"]
    assert params["prompt"] == FOX
    assert params["negative_prompt"] == ""
    assert (params["num_frames"], params["height"], params["width"]) == (9, 32, 32)
    assert (params["num_inference_steps"], params["guidance_scale"], params["fps"]) == (4, 5.0, 8)


def test_submit_without_a_model_runs_the_registrys_default_model(client: FlaskClient) -> None:
    # The suite's registry names no default_model: the first registered model is the default.
    response = client.post("/v1/jobs", json={"prompt": FOX})

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["model"] == "tiny-wan"
    models = {m["name"]: m["default"] for m in client.get("/v1/models").get_json()["data"]}
    assert models == {"tiny-wan": True, "tiny-ltx": False}


def test_submit_records_a_random_seed_when_none_is_given(client: FlaskClient) -> None:
    seeds = {
        client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX}).get_json()["params"]["seed"]
        for _ in range(3)
    }

    assert all(isinstance(seed, int) and 0 <= seed < 2**53 for seed in seeds)
    assert len(seeds) > 1


def test_submit_keeps_every_given_parameter(client: FlaskClient) -> None:
    given = {
        "negative_prompt": "blurry",
        "num_frames": 17,
        "height": 64,
        "width": 96,
        "num_inference_steps": 12,
        "guidance_scale": 7.5,
        "seed": 1234,
        "fps": 12,
    }
    job = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX, **given}).get_json()

    assert job["params"] == {"prompt": FOX, **given}


def test_submit_treats_null_optional_fields_as_absent(client: FlaskClient) -> None:
    response = client.post(
        "/v1/jobs", json={"model": "tiny-wan", "prompt": FOX, "num_frames": None, "webhook_url": None, "seed": None}
    )

    assert response.status_code == 202
    assert response.get_json()["params"]["num_frames"] == 9
    assert response.get_json()["webhook_url"] is None


def test_submit_accepts_an_integral_number_for_an_integer_field(client: FlaskClient) -> None:
    # JSON has one number type; 17.0 is the integer 17.
    job = client.post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX, "num_frames": 17.0}).get_json()

    assert job["params"]["num_frames"] == 17 and isinstance(job["params"]["num_frames"], int)


def test_submit_stores_webhook_url_and_metadata(client: FlaskClient) -> None:
    metadata = {"user": "u-17", "tags": ["fox", "snow"], "nested": {"n": 1}}
    job = client.post(
        "/v1/jobs",
        json={"model": "tiny-wan", "prompt": FOX, "webhook_url": "https://example.com/hook?x=1", "metadata": metadata},
    ).get_json()

    assert job["webhook_url"] == "https://example.com/hook?x=1"
    assert job["metadata"] == metadata


def test_submit_accepts_a_json_body_without_a_json_content_type(client: FlaskClient) -> None:
    # curl -d sends application/x-www-form-urlencoded; the body is what counts.
    response = client.post("/v1/jobs", data=f'{{"model": "tiny-wan", "prompt": "{FOX}"}}')

    assert response.status_code == 202


def test_submit_answers_202_and_leaves_the_job_for_the_sweeper_when_redis_is_down(
    api_settings: Settings,
) -> None:
    app = create_app(dataclasses.replace(api_settings, redis_url="redis://127.0.0.1:1/0"))

    response = app.test_client().post("/v1/jobs", json={"model": "tiny-wan", "prompt": FOX})

    assert response.status_code == 202
    stored = JobStore(api_settings.database_url, view=dict).get(response.get_json()["id"])
    assert stored.status.value == "queued"
    assert stored.published_at is None
