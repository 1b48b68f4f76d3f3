"""Promise: S3 unavailable during upload. A short outage: the upload is retried in place and the job succeeds
once S3 is back. A long one: the job fails with a clear error after its attempts. Never `succeeded` without its
video. The outage is the test's own S3 server stopped, then restarted on the same ports and data directory.

The short outage ends as soon as the worker has logged its first failed upload, well inside the default retry
budget (`VIDSERVE_UPLOAD_TRIES` 4, waits of 1, 2 and 4 s); the long one outlasts a budget set small through
those settings (2 tries), so the test never waits out the production budget."""

from __future__ import annotations

import dataclasses

from conftest import Services, event_types, start_worker, submit, wait_terminal
from service_harness import wait_until

from vidserve.tools.processes import ManagedProcess


def test_uploads_wait_out_a_short_s3_outage_and_fail_clearly_in_a_long_one(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    # One attempt, so the long outage ends in a failure after a single round of upload tries.
    worker = start_worker(faults, processes, dataclasses.replace(faults.settings, max_attempts=1))

    # S3 goes first (its shutdown takes seconds, a short job could upload meanwhile); the job runs, then uploads.
    faults.s3.stop()
    try:
        job_id = submit(faults, prompt="red car in the city", num_inference_steps=4)
        wait_until(lambda: "upload failed" in worker.log_tail(200_000), 60, interval=0.1, what="a failed upload")
    finally:
        faults.s3.start()
    done = wait_terminal(faults, [job_id], timeout=60)[job_id]
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert len(faults.videos.get(faults.videos.key_for(job_id))) == done["output"]["bytes"]
    assert worker.stop(timeout=30) == 0

    # The long outage, against a worker whose upload budget is two tries a fifth of a second apart.
    small_budget = dataclasses.replace(faults.settings, max_attempts=1, upload_tries=2, upload_retry_seconds=0.2)
    worker = start_worker(faults, processes, small_budget)
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
    assert worker.log_tail(200_000).count(f"job {lost}: upload failed") == 1  # one retry: two tries
