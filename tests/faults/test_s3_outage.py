"""Promise: S3 unavailable during upload. A short outage: the upload is retried in place and the job succeeds
once S3 is back. A long one: the job fails with a clear error after its attempts. Never `succeeded` without its
video. The outage is the test's own S3 server stopped, then restarted on the same ports and data directory."""

from __future__ import annotations

import dataclasses

from conftest import Services, event_types, start_worker, submit, wait_terminal
from service_harness import wait_until

from vidserve.tools.processes import ManagedProcess


def test_uploads_wait_out_a_short_s3_outage_and_fail_clearly_in_a_long_one(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    # One attempt, so the long outage ends in a failure after a single round of upload retries.
    worker = start_worker(faults, processes, dataclasses.replace(faults.settings, max_attempts=1))

    # S3 goes first (its shutdown takes seconds, a short job could upload meanwhile); the job runs, then uploads.
    faults.s3.stop()
    try:
        job_id = submit(faults, prompt="red car in the city", num_inference_steps=30)
        wait_until(lambda: "upload failed" in worker.log_tail(200_000), 60, interval=0.1, what="a failed upload")
    finally:
        faults.s3.start()
    done = wait_terminal(faults, [job_id], timeout=60)[job_id]
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert len(faults.videos.get(faults.videos.key_for(job_id))) == done["output"]["bytes"]

    faults.s3.stop()
    try:
        lost = submit(faults, prompt="blue sky", num_inference_steps=4)
        failed = wait_terminal(faults, [lost], timeout=90)[lost]
    finally:
        faults.s3.start()
    assert failed["status"] == "failed" and failed["output"] is None, failed
    assert failed["error"]["code"] == "storage_unavailable", failed["error"]
    assert failed["error"]["message"].startswith("upload failed"), failed["error"]
    assert "job.succeeded" not in event_types(faults, lost)
