"""The engine's scheduler: the waiting and running requests, admission, and when finished videos decode.

Callers' threads add and cancel requests; the loop asks each iteration which requests are admitted, which step,
and which finished ones decode now: a finished video may wait a few iterations for same-shape requests about to
finish, so they share one VAE call (the decode-wait policy).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from engine.request import EngineError, RequestCanceled
from engine.sequence import Sequence, Status

DecodeKey = Callable[[Sequence], tuple]  # finished sequences with equal keys can share one VAE call
Hold = Callable[[str, int], bool]  # EngineConfig.hold: the test hook that keeps a request at a step


class Scheduler:
    """Owns the waiting queue and the running list; thread-safe where callers' threads meet the loop."""

    def __init__(
        self,
        max_running: int,
        max_decode_batch: int,
        decode_wait_steps: int,
        decode_key: DecodeKey,
        hold: Hold | None = None,
    ) -> None:
        self.max_running = max_running
        self.max_decode_batch = max_decode_batch
        self.decode_wait_steps = decode_wait_steps
        self.decode_key = decode_key
        self.hold = hold
        # Re-entrant: `Engine.generate` holds it across several `add`s so no iteration starts between them.
        self.lock = threading.Condition()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.closed = False
        self.iteration = 0

    # --- callers' threads ------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        with self.lock:
            if self.closed:
                raise EngineError("engine is closed")
            self.waiting.append(seq)
            self.lock.notify_all()

    def cancel(self, request_id: str) -> bool:
        """A waiting request fails at once; a running one is flagged and leaves at the next admission."""
        with self.lock:
            for seq in self.waiting:
                if seq.id == request_id:
                    self.waiting.remove(seq)
                    seq.future.set_exception(RequestCanceled(f"request {request_id} canceled"))
                    return True
            for seq in self.running:
                if seq.id == request_id and not seq.canceled:
                    seq.canceled = True
                    return True
        return False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()

    def drain(self) -> list[Sequence]:
        """Every request still queued or running, which the scheduler forgets."""
        with self.lock:
            left = [*self.waiting, *self.running]
            self.waiting.clear()
            self.running.clear()
        return left

    @property
    def num_unfinished(self) -> int:
        with self.lock:
            return len(self.waiting) + len(self.running)

    # --- the loop --------------------------------------------------------------------------------

    def wait_for_work(self) -> bool:
        """Block until a request is waiting or running; False once the scheduler is closed."""
        with self.lock:
            while not self.closed and not self.waiting and not self.running:
                self.lock.wait()
            return not self.closed

    def wait_while_all_held(self, poll_s: float) -> None:
        """Every request held (a test's gate): look again shortly, or at once when a request arrives."""
        with self.lock:
            if not self.waiting and self.running and all(self.held(s) for s in self.running):
                self.lock.wait(poll_s)

    def admit(self) -> list[Sequence]:
        """Drop canceled requests, then move waiting ones to running (oldest first) up to `max_running`.

        The admitted count as running at once, so that `cancel` finds them while their text is being encoded.
        """
        with self.lock:
            for seq in [s for s in self.running if s.canceled]:
                self.running.remove(seq)
                seq.future.set_exception(RequestCanceled(f"request {seq.id} canceled"))
            room = self.max_running - len(self.running)
            admitted = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
            self.running.extend(admitted)
        return admitted

    def held(self, seq: Sequence) -> bool:
        if self.hold is None or seq.status is not Status.RUNNING or seq.done:
            return False
        return self.hold(seq.id, seq.step_index)

    def runnable(self) -> list[Sequence]:
        """The running requests that take a step this iteration, oldest first."""
        return [s for s in self.running if not s.done and not self.held(s)]

    def finished(self) -> list[Sequence]:
        """The running requests whose every step is done (and not canceled): to decode."""
        return [s for s in self.running if s.done and not s.canceled]

    def remove(self, seq: Sequence) -> None:
        with self.lock:
            if seq in self.running:
                self.running.remove(seq)

    def fail_running(self) -> list[Sequence]:
        """After an iteration failed as a whole: every running request, which the scheduler forgets."""
        with self.lock:
            failed, self.running = self.running, []
        return failed

    def decode_batches(self, finished: list[Sequence]) -> list[list[Sequence]]:
        """Which finished requests decode now, as VAE calls of one shape and at most `max_decode_batch` videos."""
        groups: dict[tuple, list[Sequence]] = {}
        for seq in finished:
            if seq.finished_at is None:
                seq.finished_at = self.iteration
            groups.setdefault(self.decode_key(seq), []).append(seq)
        batches = []
        for key, group in groups.items():
            if not self._worth_waiting(key, group):
                batches += [group[i : i + self.max_decode_batch] for i in range(0, len(group), self.max_decode_batch)]
        return batches

    def _worth_waiting(self, key: tuple, group: list[Sequence]) -> bool:
        """Whether to hold finished videos back an iteration for a same-shape request about to finish."""
        if len(group) >= self.max_decode_batch:
            return False
        budget = self.decode_wait_steps - (self.iteration - min(s.finished_at for s in group))
        return budget > 0 and any(
            not s.done and not s.canceled and s.num_steps - s.step_index <= budget and self.decode_key(s) == key
            for s in self.running
        )
