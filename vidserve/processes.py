"""Child processes that `make run` and the end-to-end tests start: each in its own process group.

A group of its own means a terminal's Ctrl-C reaches only the supervisor, which then stops every group it
started (gunicorn's workers, Celery's threads) and nothing else.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
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


def vidserve_command(*args: str) -> list[str]:
    """`python -m vidserve.cli ARGS` with this interpreter: works before the console script is installed."""
    return [sys.executable, "-m", "vidserve.cli", *args]
