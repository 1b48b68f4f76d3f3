"""Decides, each iteration, which running requests share a transformer forward.

Requests whose adapter group key matches (latent shape, text length, expert) go together, in arrival
order, until a forward's row or token limit is reached; different groups run one after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.families.base import FamilyAdapter
from engine.sequence import Sequence


@dataclass
class Batch:
    """Sequences advancing in one forward."""

    key: tuple
    seqs: list[Sequence] = field(default_factory=list)
    rows: int = 0
    tokens: int = 0
    # Filled by the runner: per sequence, whether its tail blocks came from its first-block cache, and how many
    # transformer blocks ran for its rows.
    reused: list[bool] = field(default_factory=list)
    block_evaluations: list[int] = field(default_factory=list)


class Planner:
    def __init__(self, adapter: FamilyAdapter, max_rows: int, max_tokens: int) -> None:
        self.adapter = adapter
        self.max_rows = max_rows
        self.max_tokens = max_tokens

    def plan(self, running: list[Sequence]) -> list[Batch]:
        """Every running sequence appears in exactly one batch, so each advances one step per iteration."""
        open_batches: dict[tuple, Batch] = {}
        batches: list[Batch] = []
        for seq in running:
            key = self.adapter.group_key(seq)
            rows = seq.rows
            tokens = rows * self.adapter.tokens_per_row(seq)
            batch = open_batches.get(key)
            # A single sequence over the limits still runs, alone: limits bound sharing, not admission.
            if batch is None or batch.rows + rows > self.max_rows or batch.tokens + tokens > self.max_tokens:
                batch = open_batches[key] = Batch(key=key)
                batches.append(batch)
            batch.seqs.append(seq)
            batch.rows += rows
            batch.tokens += tokens
        return batches
