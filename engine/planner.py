"""Decides, each iteration, which running requests share a transformer forward.

Families with a packed forward (engine.packing) put every running request into one forward per model (per
expert for two-expert Wan), oldest first, until the forward's row or token budget is full; the rest go into
further forwards of the same iteration. Other families group by their key (latent shape, text length, expert).
The planner reads only a small duck interface of what it batches: `rows`, plus what the adapter's `expert`,
`group_key` and `tokens_per_row` read (latents, timestep, cond text), so windows of long requests can be batched
like requests.
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


class Planner:
    def __init__(self, adapter: FamilyAdapter, max_rows: int, max_tokens: int) -> None:
        self.adapter = adapter
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.packed = adapter.packs

    def key(self, seq: Sequence) -> tuple:
        """Sequences with equal keys may share a forward."""
        return ("packed", self.adapter.expert(seq)) if self.packed else self.adapter.group_key(seq)

    def plan(self, running: list[Sequence]) -> list[Batch]:
        """Every running sequence appears in exactly one batch, so each advances one step per iteration."""
        open_batches: dict[tuple, Batch] = {}
        batches: list[Batch] = []
        for seq in running:
            key = self.key(seq)
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
