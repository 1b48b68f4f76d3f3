"""`RestartingProcess` (make run's supervision): a child that keeps dying is started again after a back-off that
doubles up to its cap, each death and restart said on the console and in the child's log.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from service_harness import wait_until

from vidserve.tools.processes import RestartingProcess


class QuickRestarts(RestartingProcess):
    # make run's schedule (1 s doubling to 30 s), shortened: the rule is the same.
    FIRST_BACKOFF = 0.05
    MAX_BACKOFF = 0.2


def test_a_child_that_keeps_dying_is_restarted_after_a_doubling_capped_back_off(tmp_path: Path) -> None:
    said: list[str] = []
    log = tmp_path / "crasher.log"
    child = QuickRestarts("crasher", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), log, said.append)
    first = child.pid
    try:
        wait_until(lambda: child.tend() or child.restarts >= 4, 60, interval=0.01, what="four restarts")
    finally:
        child.stop(timeout=5.0)

    deaths = [m for m in said if "exited with 3" in m]
    assert [re.search(r"restarting in ([\d.]+)s", m).group(1) for m in deaths[:4]] == ["0.05", "0.1", "0.2", "0.2"]
    assert deaths[0].startswith(f"crasher (pid {first}) exited with 3")
    assert [m for m in said if "restarted" in m][0].startswith("crasher restarted (pid")
    assert child.pid != first
    written = log.read_text()
    assert "[vidserve] crasher (pid" in written and "[vidserve] crasher restarted (pid" in written
