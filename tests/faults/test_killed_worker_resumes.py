"""Promise: a job whose worker is SIGKILLed after it saved a checkpoint resumes on the successor from that
step, not from step 0, and its video is the video of an uninterrupted run of the same request.

The job waits at the step gate, its checkpoint of that step in the bucket, when the worker is killed; the
successor and the reference run each have the worker to themselves (the same batch mates: none), which is
what the byte-for-byte promise holds over."""

from __future__ import annotations

import signal

from conftest import GATED_MODEL, Services, gated_settings, start_worker, submit, wait_held, wait_terminal
from service_harness import GATE_STEP, wait_until

from engine.checkpoint import Checkpoint
from vidserve.storage import VideoStore
from vidserve.tools.processes import ManagedProcess
from worker.video import decode_mp4

STEPS = 8
EVERY = 2  # the gate's step is a checkpoint step
PARAMS = {"model": GATED_MODEL, "prompt": "a quiet harbour", "seed": 3, "num_inference_steps": STEPS}


def test_a_killed_workers_job_resumes_from_its_checkpoint_with_the_same_video(
    faults: Services, processes: list[ManagedProcess]
) -> None:
    settings = gated_settings(faults, checkpoint_every_steps=EVERY)
    videos = faults.videos
    doomed = start_worker(faults, processes, settings)
    job_id = submit(faults, **PARAMS)
    key = VideoStore.checkpoint_key(job_id)
    wait_held(faults, [job_id], STEPS)

    def checkpoint_step() -> int | None:
        data = videos.get_if_exists(key)
        return None if data is None else Checkpoint.from_bytes(data).step

    wait_until(lambda: checkpoint_step() == GATE_STEP, 60, interval=0.02, what="the gate step's checkpoint")

    doomed.process.send_signal(signal.SIGKILL)  # no hand-back: the lease expires, the sweeper queues it again
    doomed.process.wait()
    assert faults.store.get(job_id).status.value == "running"  # killed mid-run
    faults.gate.release(job_id)
    start_worker(faults, processes, settings)
    resumed = wait_terminal(faults, [job_id], timeout=300)[job_id]
    assert resumed["status"] == "succeeded" and resumed["attempts"] == 2, resumed
    assert resumed["stats"]["resumed_from_step"] == GATE_STEP
    assert resumed["stats"]["steps_computed"] == STEPS
    assert videos.get_if_exists(key) is None  # deleted once the job succeeded

    # The same request, never interrupted, on the same (now idle) worker.
    reference_id = submit(faults, **PARAMS)
    faults.gate.release(reference_id)
    reference = wait_terminal(faults, [reference_id], timeout=300)[reference_id]
    assert reference["status"] == "succeeded" and reference["stats"]["resumed_from_step"] == 0
    got, want = videos.get(videos.key_for(job_id)), videos.get(videos.key_for(reference_id))
    assert (decode_mp4(got) == decode_mp4(want)).all()
    assert got == want  # identical frames, identical encoder settings: identical MP4 bytes
