"""GET /v1/jobs/{id}/content: a 302 to a presigned URL of the MP4 once the job has succeeded, 409 before.

The presigned URL really downloads the object from the S3 server.
"""

from __future__ import annotations

import urllib.request
import uuid

from flask.testing import FlaskClient

from vidserve.jobs import JobStore
from vidserve.settings import Settings
from vidserve.storage import VideoStore


def test_content_of_a_queued_job_is_a_409(client: FlaskClient, submit) -> None:
    job = submit()

    response = client.get(f"/v1/jobs/{job['id']}/content")

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "job_not_succeeded"


def test_content_of_an_unknown_job_is_a_404(client: FlaskClient) -> None:
    assert client.get(f"/v1/jobs/{uuid.uuid4()}/content").status_code == 404


def test_content_of_a_succeeded_job_redirects_to_a_presigned_url_of_its_video(
    client: FlaskClient, submit, api_settings: Settings
) -> None:
    store, videos = JobStore(api_settings.database_url, view=dict), VideoStore(api_settings)
    job = submit()
    key = VideoStore.key_for(job["id"])
    video = b"\x00\x00\x00\x18ftypmp42 not really an mp4"
    videos.put(key, video)
    store.claim(job["id"], "test-worker", 60)
    output = {
        "key": key,
        "content_type": "video/mp4",
        "bytes": len(video),
        "num_frames": 9,
        "width": 32,
        "height": 32,
        "fps": 8,
    }
    store.succeed(job["id"], "test-worker", output, {"steps_computed": 4})

    response = client.get(f"/v1/jobs/{job['id']}/content")

    assert response.status_code == 302
    with urllib.request.urlopen(response.headers["Location"], timeout=10) as download:
        assert download.read() == video
        assert download.headers["Content-Type"] == "video/mp4"
    shown = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert shown["status"] == "succeeded"
    assert shown["output"]["url"].startswith(api_settings.s3_endpoint)
    assert shown["output"]["bytes"] == len(video)
