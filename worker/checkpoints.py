"""A running job's engine checkpoints in the object store: saved off the engine's loop, read back when the job
is delivered again after a crash, deleted when the job ends.

One object per job (`VideoStore.checkpoint_key`), overwritten by each newer checkpoint. Every checkpoint of a
job is a valid state of the same deterministic computation, so a late upload from a worker that lost the job
can at worst make its successor's successor resume from an earlier step.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from engine.request import CheckpointMismatch
from vidserve.storage import VideoStore

if TYPE_CHECKING:
    from engine.checkpoint import Checkpoint

log = logging.getLogger(__name__)

# Serialises and uploads checkpoints, so the engine's loop only copies the state and goes on.
_uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vidserve-checkpoint")
# How long the end of a job waits for its checkpoint upload in flight before deleting the object.
UPLOAD_WAIT_SECONDS = 10.0


class JobCheckpoints:
    """The checkpoints of one attempt at a job. `offer` is called on the engine's loop thread."""

    def __init__(self, videos: VideoStore, job_id: str) -> None:
        self.videos = videos
        self.job_id = job_id
        self.key = VideoStore.checkpoint_key(job_id)
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._pending: Checkpoint | None = None
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()

    def load(self) -> Checkpoint | None:
        """The job's latest checkpoint; None when there is none or it cannot be read (the job starts over)."""
        from engine.checkpoint import Checkpoint

        try:
            data = self.videos.get_if_exists(self.key)
        except Exception:  # the store failing must not fail the job: restarting from step 0 is always correct
            log.warning("job %s: could not read its checkpoint; starting from step 0", self.job_id, exc_info=True)
            return None
        if data is None:
            return None
        try:
            return Checkpoint.from_bytes(data)
        except CheckpointMismatch as exc:
            log.warning("job %s: unusable checkpoint (%s); starting from step 0", self.job_id, exc)
            return None

    def offer(self, checkpoint: Checkpoint) -> None:
        """Upload the checkpoint in the background; one taken while an upload runs replaces any still waiting."""
        with self._lock:
            if self._closed:
                return
            self._pending = checkpoint
            if not self._idle.is_set():  # an upload runs: it takes this one when it is done
                return
            self._idle.clear()
        _uploads.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                checkpoint, self._pending = self._pending, None
                if checkpoint is None or self._closed:
                    self._idle.set()
                    return
            try:
                self.videos.put(self.key, checkpoint.to_bytes(), "application/octet-stream")
                self.written += 1
            except Exception:  # a failed checkpoint costs only the work since the previous one
                self.failed += 1
                log.warning("job %s: checkpoint at step %d not saved", self.job_id, checkpoint.step, exc_info=True)

    def flush(self) -> None:
        """Wait (bounded) until the checkpoints offered so far are uploaded: before the job is handed back, so the
        next attempt finds the latest one."""
        if not self._idle.wait(UPLOAD_WAIT_SECONDS):
            log.warning("job %s: a checkpoint upload is still running", self.job_id)

    def close(self) -> None:
        """No more uploads; waits (bounded) for the one in flight. The object stays for the job's next attempt."""
        with self._lock:
            self._closed, self._pending = True, None
        if not self._idle.wait(UPLOAD_WAIT_SECONDS):
            log.warning("job %s: a checkpoint upload is still running", self.job_id)

    def discard(self) -> None:
        """The job ended: stop uploading and delete its checkpoint (a leftover is deleted by the sweeper)."""
        self.close()
        try:
            self.videos.delete(self.key)
        except Exception:
            log.warning("job %s: checkpoint not deleted; the sweeper will", self.job_id, exc_info=True)

    def stats(self) -> dict[str, int]:
        return {"checkpoints_written": self.written, "checkpoints_failed": self.failed}
