"""Runs one batched transformer forward and splits it back into each request's guided noise prediction.

The adapter builds the inputs (per-sample timestep vector, conditional rows then unconditional rows);
the runner calls the model and applies each request's own guidance to its own rows.
"""

from __future__ import annotations

import torch

from engine.families.base import FamilyAdapter
from engine.planner import Batch


class ModelRunner:
    def __init__(self, adapter: FamilyAdapter) -> None:
        self.adapter = adapter

    @torch.no_grad()
    def run(self, batch: Batch) -> list[torch.Tensor]:
        """One forward for the batch; returns the noise prediction for each sequence, in batch order."""
        call = self.adapter.model_call(batch.seqs)
        output = call.model(**call.kwargs, return_dict=False)[0]
        n = len(batch.seqs)
        preds, u = [], n
        for i, seq in enumerate(batch.seqs):
            uncond = None
            if seq.uncond is not None:
                uncond, u = output[u : u + 1], u + 1
            preds.append(self.adapter.guide(seq, output[i : i + 1], uncond))
        return preds
