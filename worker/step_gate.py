"""A test hook: a registry entry can make the worker hold its model's requests at one step until a file appears.

`options.step_gate = { at_step = k, release_dir = "/some/dir" }` keeps every request of that model at step k
until `<release_dir>/<job id>` or `<release_dir>/all` exists, so a test can catch a job mid-way (to stop, kill,
cancel or break something under it) however fast or loaded the machine is. Production registries never set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The release file that lets every held request of the model go on.
RELEASE_ALL = "all"


@dataclass(frozen=True)
class StepGate:
    at_step: int
    release_dir: Path

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> StepGate | None:
        """The gate a registry entry's options ask for, or None; raises ValueError for a malformed one."""
        entry = options.get("step_gate")
        if entry is None:
            return None
        if not isinstance(entry, dict) or set(entry) != {"at_step", "release_dir"}:
            raise ValueError("options.step_gate must be a table with exactly at_step and release_dir")
        at_step, release_dir = entry["at_step"], entry["release_dir"]
        if not isinstance(at_step, int) or isinstance(at_step, bool) or at_step < 1:
            raise ValueError("options.step_gate.at_step must be an integer of at least 1")
        if not isinstance(release_dir, str) or not release_dir:
            raise ValueError("options.step_gate.release_dir must be a directory path")
        return cls(at_step, Path(release_dir))

    def __call__(self, request_id: str, step: int) -> bool:
        """Whether the request must wait at `step` (the engine's `hold` hook; request ids are job ids)."""
        if step != self.at_step:
            return False
        return not ((self.release_dir / request_id).exists() or (self.release_dir / RELEASE_ALL).exists())

    def release(self, job_id: str = RELEASE_ALL) -> None:
        """Let the job (default: every job of the model) go on past the gate."""
        self.release_dir.mkdir(parents=True, exist_ok=True)
        (self.release_dir / job_id).touch()
