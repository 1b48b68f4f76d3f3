"""Runs an iteration's forwards and splits each back into every request's guided noise prediction.

Families with a packed forward (engine.packing) run one forward over rows of any shape: the runner builds each
request's rows (conditional, then unconditional under guidance), drives embed, blocks and head itself so that
requests whose first-block cache holds drop out of the tail blocks, and hands every row its cached text
projections. Families without one still call the diffusers model on same-shape groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from engine.cache_policy import FIRST_BLOCK
from engine.families.base import FamilyAdapter
from engine.packing import PackedForward, PackedRow, PackedState
from engine.planner import Batch
from engine.sequence import Sequence
from engine.step_cache import BlockHooks, ForwardCache
from engine.text_kv import TextKV


@dataclass
class ForwardResult:
    """What one forward gave each of its sequences, in batch order."""

    noise_preds: list[torch.Tensor]  # guided, (1, C, F, H, W) each
    reused: list[bool]  # whose tail blocks came from its first-block cache
    block_evaluations: list[int]  # transformer blocks run for its rows
    tokens: int  # tokens in the forward (the planner's budget unit)


class Runner(Protocol):
    """Executes an iteration's forwards: one device (`ModelRunner`) or a chain of layer-split stages."""

    def run_all(self, batches: list[Batch]) -> list[ForwardResult | BaseException]:
        """Every batch's forward; per batch its result, or the error that failed it (the others still count)."""
        ...

    def close(self) -> None: ...


def packed_rows(
    adapter: FamilyAdapter, packed: PackedForward, seqs: list[Sequence], reuse_text: bool
) -> tuple[list[PackedRow], list[list[int]]]:
    """The forward's rows (each request's conditional row, then its unconditional one) and, per request, its rows.

    With `reuse_text`, a request's text projections for this model are computed at its first step and kept in
    `seq.extra["text_kv"]` for every other step (the engine drops them when the request finishes).
    """
    rows: list[PackedRow] = []
    owned: list[list[int]] = []
    for seq in seqs:
        mine = []
        positions = adapter.row_positions(seq)
        for role, text in (("cond", seq.cond), ("uncond", seq.uncond)):
            if text is None:
                continue
            kv = None
            if reuse_text:
                store = seq.extra.setdefault("text_kv", {})
                key = ("packed", id(packed.model), role)
                if key not in store:
                    store[key] = packed.text_kv(text)
                kv = store[key]
            mine.append(len(rows))
            rows.append(
                PackedRow(
                    seq.latents,
                    seq.row_timestep,
                    text,
                    text_kv=kv,
                    positions=positions,
                    guidance=seq.request.guidance_scale,
                )
            )
        owned.append(mine)
    return rows, owned


def guide_rows(
    adapter: FamilyAdapter, seqs: list[Sequence], owned: list[list[int]], outputs: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Each request's own guidance over its own rows' outputs."""
    preds = []
    for seq, mine in zip(seqs, owned, strict=True):
        uncond = outputs[mine[1]] if len(mine) > 1 else None
        preds.append(adapter.guide(seq, outputs[mine[0]], uncond))
    return preds


def guide_grouped(adapter: FamilyAdapter, seqs: list[Sequence], output: torch.Tensor) -> list[torch.Tensor]:
    """Each request's own guidance over a same-shape group's output: conditional rows first, then unconditional."""
    preds, u = [], len(seqs)
    for i, seq in enumerate(seqs):
        uncond = None
        if seq.uncond is not None:
            uncond, u = output[u : u + 1], u + 1
        preds.append(adapter.guide(seq, output[i : i + 1], uncond))
    return preds


class ModelRunner:
    """The `Runner` on one device: each batch's forward in turn, packed or as a same-shape group through diffusers."""

    def __init__(self, adapter: FamilyAdapter, text_kv_cache: bool = True) -> None:
        self.adapter = adapter
        self.text_kv_cache = text_kv_cache
        # Installed once per model; a wrapper whose plan is unset calls its block unchanged.
        self.block_hooks = {
            id(m): BlockHooks.install(m, adapter.cache_blocks(m), adapter.block_row_args) for m in adapter.models()
        }
        self.text_kv: dict[int, TextKV] = {}
        for model in adapter.models() if text_kv_cache else []:
            parts = adapter.text_kv_parts(model)
            if parts is not None and adapter.packed_forward(model) is None:
                self.text_kv[id(model)] = text_kv = TextKV.install(model, *parts)
                text_kv.hooks = self.block_hooks[id(model)]

    def run_all(self, batches: list[Batch]) -> list[ForwardResult | BaseException]:
        results: list[ForwardResult | BaseException] = []
        for batch in batches:
            try:
                results.append(self.run(batch))
            except Exception as exc:  # e.g. out of memory: fails this forward's requests only
                results.append(exc)
        return results

    def close(self) -> None:
        """Nothing to release: the model lives with the adapter."""

    @torch.no_grad()
    def run(self, batch: Batch) -> ForwardResult:
        """One forward for the batch."""
        model = self.adapter.models()[self.adapter.expert(batch.seqs[0])]
        packed = self.adapter.packed_forward(model)
        if packed is not None:
            return self._run_packed(batch, packed)
        return self._run_grouped(batch)

    # --- packed forwards ------------------------------------------------------------------------------

    def _run_packed(self, batch: Batch, packed: PackedForward) -> ForwardResult:
        seqs = batch.seqs
        rows, owned = packed_rows(self.adapter, packed, seqs, self.text_kv_cache)
        state = packed.embed(rows)
        blocks = packed.num_blocks
        caches = [s.cache if s.cache is not None and s.cache.policy.policy == FIRST_BLOCK else None for s in seqs]
        reused = [False] * len(seqs)
        if blocks >= 2 and any(c is not None for c in caches):
            state, reused = self._first_block(packed, state, owned, caches)
        else:
            for index in range(blocks):
                state = packed.block(index, state)
        preds = guide_rows(self.adapter, seqs, owned, packed.head(state))
        evaluations = [len(mine) * (1 if r else blocks) for mine, r in zip(owned, reused, strict=True)]
        return ForwardResult(preds, reused, evaluations, batch.tokens)

    @staticmethod
    def _first_block(
        packed: PackedForward, state: PackedState, owned: list[list[int]], caches: list
    ) -> tuple[PackedState, list[bool]]:
        """Block 0 for every row; then the tail blocks only for requests whose first-block cache does not hold."""
        model_id = id(packed.model)
        before = state
        head = packed.block(0, state)

        def stacked(s: PackedState, rows: list[int]) -> torch.Tensor:  # a request's rows as (rows, tokens, D)
            return torch.cat([s.row_hidden(r) for r in rows])

        reused = [
            cache is not None and cache.reuses_tail(stacked(head, mine) - stacked(before, mine), model_id)
            for mine, cache in zip(owned, caches, strict=True)
        ]
        computed = [r for mine, skip in zip(owned, reused, strict=True) if not skip for r in mine]
        tail = head.select(computed)
        if computed:
            for index in range(1, packed.num_blocks):
                tail = packed.block(index, tail)
        position = {row: i for i, row in enumerate(computed)}
        parts: list[torch.Tensor] = [head.hidden] * head.num_rows
        for mine, cache, skip in zip(owned, caches, reused, strict=True):
            if skip:
                residual = cache.tail_residual[0]
                for k, row in enumerate(mine):
                    parts[row] = head.row_hidden(row) + residual[k : k + 1]
                continue
            for row in mine:
                parts[row] = tail.row_hidden(position[row])
            if cache is not None:
                cache.tail_residual = (stacked(tail, [position[r] for r in mine]) - stacked(head, mine),)
        return head.with_rows_hidden(parts), reused

    # --- same-shape groups through the diffusers model -------------------------------------------------

    def _run_grouped(self, batch: Batch) -> ForwardResult:
        seqs = batch.seqs
        call = self.adapter.model_call(seqs)
        model, n = call.model, len(seqs)
        rows, u = [], n
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

        preds = guide_grouped(self.adapter, seqs, output)
        reused = plan.reused if plan is not None else [False] * n
        evaluations = plan.block_evaluations() if plan else [len(r) * blocks for r in rows]
        return ForwardResult(preds, reused, evaluations, batch.tokens)

    @staticmethod
    def _text_rows(seq: Sequence, role: str, model: torch.nn.Module, text_kv: TextKV) -> list:
        """A request's text projections for this model: computed at its first step, reused at every other."""
        store = seq.extra.setdefault("text_kv", {})
        key = (id(model), role)
        if key not in store:
            store[key] = text_kv.of((seq.cond if role == "cond" else seq.uncond).embeds)
        return store[key]
