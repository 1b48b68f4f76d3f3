"""Layer split: one model's transformer spread over several devices (or CPU processes), pipelined, exact.

Stage 0 runs in the engine process; the engine starts stages 1..S-1 itself. See `runner.SplitRunner`.
"""

from engine.layer_split.runner import SplitRunner, StageFailed, stage_devices

__all__ = ["SplitRunner", "StageFailed", "stage_devices"]
