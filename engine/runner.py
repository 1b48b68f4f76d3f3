"""Runs one batched transformer forward and splits it back into each request's guided noise prediction.

The adapter builds the inputs (per-sample timestep vector, conditional rows then unconditional rows);
the runner hands the forward its rows' cached text projections and first-block plan, calls the model, and
applies each request's own guidance to its own rows.
"""

from __future__ import annotations

import torch

from engine.cache_policy import FIRST_BLOCK
from engine.families.base import FamilyAdapter
from engine.planner import Batch
from engine.sequence import Sequence
from engine.step_cache import BlockHooks, ForwardCache
from engine.text_kv import TextKV


class ModelRunner:
    def __init__(self, adapter: FamilyAdapter, text_kv_cache: bool = True) -> None:
        self.adapter = adapter
        # Installed once per model; a wrapper whose plan is unset calls its block unchanged.
        self.block_hooks = {
            id(m): BlockHooks.install(m, adapter.cache_blocks(m), adapter.block_row_args) for m in adapter.models()
        }
        self.text_kv: dict[int, TextKV] = {}
        for model in adapter.models() if text_kv_cache else []:
            parts = adapter.text_kv_parts(model)
            if parts is not None:
                self.text_kv[id(model)] = text_kv = TextKV.install(model, *parts)
                text_kv.hooks = self.block_hooks[id(model)]

    @torch.no_grad()
    def run(self, batch: Batch) -> list[torch.Tensor]:
        """One forward for the batch; returns the noise prediction for each sequence, in batch order.

        Sets `batch.reused` (whose tail blocks came from its first-block cache) and `batch.block_evaluations`.
        """
        seqs = batch.seqs
        call = self.adapter.model_call(seqs)
        model, n = call.model, len(seqs)
        rows, roles, u = [], [], n
        for i, seq in enumerate(seqs):
            rows.append([i] if seq.uncond is None else [i, u])
            u += seq.uncond is not None
        roles = [(s, "cond") for s in seqs] + [(s, "uncond") for s in seqs if s.uncond is not None]

        hooks = self.block_hooks[id(model)]
        caches = [s.cache if s.cache is not None and s.cache.policy.policy == FIRST_BLOCK else None for s in seqs]
        blocks = len(hooks.blocks)
        plan = ForwardCache(rows, caches, model, blocks) if any(c is not None for c in caches) else None
        text_kv = self.text_kv.get(id(model))
        if text_kv is not None:
            text_kv.activate([self._text_rows(seq, role, model, text_kv) for seq, role in roles])
        hooks.plan = plan
        try:
            output = model(**call.kwargs, return_dict=False)[0]
        finally:
            hooks.plan = None
            if text_kv is not None:
                text_kv.deactivate()

        batch.reused = plan.reused if plan is not None else [False] * n
        batch.block_evaluations = plan.block_evaluations() if plan else [len(r) * blocks for r in rows]
        preds, u = [], n
        for i, seq in enumerate(seqs):
            uncond = None
            if seq.uncond is not None:
                uncond, u = output[u : u + 1], u + 1
            preds.append(self.adapter.guide(seq, output[i : i + 1], uncond))
        return preds

    @staticmethod
    def _text_rows(seq: Sequence, role: str, model: torch.nn.Module, text_kv: TextKV) -> list:
        """A request's text projections for this model: computed at its first step, reused at every other."""
        store = seq.extra.setdefault("text_kv", {})
        key = (id(model), role)
        if key not in store:
            store[key] = text_kv.of((seq.cond if role == "cond" else seq.uncond).embeds)
        return store[key]
