"""Promise: a job whose worker is SIGKILLed after it saved a checkpoint resumes on the successor from that
step, not from step 0, and its video is the video of an uninterrupted run of the same request."""

from __future__ import annotations

import dataclasses
import signal

from conftest import Services, start_worker, submit, wait_terminal
from service_harness import wait_until

from engine.checkpoint import Checkpoint
from vidserve.processes import ManagedProcess
from vidserve.storage import VideoStore
from worker.video import decode_mp4

# Long enough that the kill lands mid-run on a quiet machine (a tiny step takes about 2 ms there), with a
# checkpoint every EVERY steps, so the first one is in the bucket a few tens of milliseconds in.
STEPS = 1000
EVERY = 10
PARAMS = {"prompt": "a quiet harbour", "seed": 3, "num_inference_steps": STEPS}


def test_a_killed_workers_job_resumes_from_its_checkpoint_with_the_same_video(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    settings = dataclasses.replace(faults.settings, checkpoint_every_steps=EVERY)
    videos = faults.videos
    doomed = start_worker(faults, processes, settings)
    job_id = submit(faults, **PARAMS)
    key = VideoStore.checkpoint_key(job_id)
    wait_until(lambda: videos.get_if_exists(key) is not None, 120, interval=0.02, what="a checkpoint")
    seen = Checkpoint.from_bytes(videos.get(key)).step

    doomed.process.send_signal(signal.SIGKILL)  # no hand-back: the lease expires, the sweeper queues it again
    doomed.process.wait()
    assert faults.store.get(job_id).status.value == "running"  # killed mid-run
    start_worker(faults, processes, settings)
    resumed = wait_terminal(faults, [job_id], timeout=300)[job_id]
    assert resumed["status"] == "succeeded" and resumed["attempts"] == 2, resumed
    assert STEPS > resumed["stats"]["resumed_from_step"] >= seen > 0
    assert resumed["stats"]["steps_computed"] == STEPS
    assert videos.get_if_exists(key) is None  # deleted once the job succeeded

    # The same request, never interrupted, on the same (now idle) worker.
    reference_id = submit(faults, **PARAMS)
    reference = wait_terminal(faults, [reference_id], timeout=300)[reference_id]
    assert reference["status"] == "succeeded" and reference["stats"]["resumed_from_step"] == 0
    got, want = videos.get(videos.key_for(job_id)), videos.get(videos.key_for(reference_id))
    assert (decode_mp4(got) == decode_mp4(want)).all()
    assert got == want  # identical frames, identical encoder settings: identical MP4 bytes
