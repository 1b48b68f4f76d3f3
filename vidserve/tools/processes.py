"""Child processes that `make run` and the end-to-end tests start: each in its own process group.

A group of its own means a terminal's Ctrl-C reaches only the supervisor, which then stops every group it
started (gunicorn's workers, Celery's threads) and nothing else. `RestartingProcess` starts a child again
when it dies, the way a process manager would.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for a child that must not outlive its parent."""
    # Linux: the child gets SIGTERM when the supervisor dies, even of SIGKILL, so nothing is orphaned.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ManagedProcess:
    """A command running in its own session, its output appended to a log file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = Path(log_path) if log_path else None
        self._terminated = False
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.args,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            if self.log_path:
                log.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def terminate(self) -> None:
        """Ask the whole group to stop (SIGTERM) without waiting: lets several children stop in parallel."""
        if self.alive() and not self._terminated:
            # Once only: Celery treats a second SIGTERM during its warm shutdown as "die now".
            self._terminated = True
            self._signal_group(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the whole group, wait up to `timeout`, then SIGKILL what is left of it."""
        if self.alive():
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        # The leader may be gone while its group lives on (a gunicorn worker mid-exit): finish it.
        deadline = time.monotonic() + 5.0
        while self._group_exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group_exists():
            self._signal_group(signal.SIGKILL)
        return self.process.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def _group_exists(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class RestartingProcess:
    """A `ManagedProcess` that its supervisor's loop starts again when it dies, after a back-off.

    The back-off doubles (1 s, 2 s, 4 s ... 30 s) while the child keeps dying soon after each start, and starts
    over once it has stayed up for a minute. Each death and restart is said on the console and in the child's log.
    """

    FIRST_BACKOFF = 1.0
    MAX_BACKOFF = 30.0
    STABLE_SECONDS = 60.0

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        say: Callable[[str], None],
    ) -> None:
        self.name, self.args, self.env, self.log_path, self._say = name, list(args), env, log_path, say
        self.restarts = 0
        self._backoff = self.FIRST_BACKOFF
        self._restart_at: float | None = None
        self.current = ManagedProcess(name, self.args, env=env, log_path=log_path)
        self._started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.current.pid

    def tend(self) -> None:
        """Call often: notices a death, and starts the child again once its back-off has passed."""
        now = time.monotonic()
        if self._restart_at is None:
            if self.current.alive():
                if now - self._started_at >= self.STABLE_SECONDS:
                    self._backoff = self.FIRST_BACKOFF
                return
            code = self.current.process.returncode
            self.current.stop(timeout=5.0)  # what is left of its group (gunicorn's workers) goes too
            self._restart_at = now + self._backoff
            self._note(f"{self.name} (pid {self.current.pid}) exited with {code}; restarting in {self._backoff:g}s")
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
        elif now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self.current = ManagedProcess(self.name, self.args, env=self.env, log_path=self.log_path)
            self._started_at = now
            self._note(f"{self.name} restarted (pid {self.current.pid}, restart {self.restarts})")

    def stop(self, timeout: float) -> int | None:
        self._restart_at = None
        return self.current.stop(timeout)

    def _note(self, message: str) -> None:
        self._say(message)
        with open(self.log_path, "a") as log:
            log.write(f"[vidserve] {message}\n")


def vidserve_command(*args: str) -> list[str]:
    """`python -m vidserve.tools.cli ARGS` with this interpreter: works before the console script is installed."""
    return [sys.executable, "-m", "vidserve.tools.cli", *args]
