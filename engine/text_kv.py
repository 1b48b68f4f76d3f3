"""Exact reuse of text projections in cross-attention families (Wan, LTX-Video), inside mixed batches.

A prompt's projected text states and every block's cross-attention key and value depend on the prompt and
the weights only, never on the step: each request computes them once per model (`TextKV.of`) and every
forward stacks its rows' copies instead of projecting 512 text tokens again in every block at every step.
The same numbers as computing them in the forward; the processors fall back to diffusers' own when inactive.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from engine.step_cache import BlockHooks


class TextKV:
    """Per model: the installed processors and the rows' stacked projections while a forward runs."""

    def __init__(self, model: torch.nn.Module, projection: torch.nn.Module, attentions: list[Any]) -> None:
        self.model = model
        self.projection = projection
        self.attentions = attentions
        self.hooks: BlockHooks | None = None  # set by the runner: which rows the blocks run now
        self.projected: torch.Tensor | None = None  # stands in for the projected text while a forward runs
        self.kv: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # per row, per block (key, value)
        # Per block: the rows last stacked and their stacked key and value. A batch keeps its members for many
        # steps, so the stack is reused instead of copied again at every forward.
        self._stacked: dict[int, tuple[tuple[int, ...], torch.Tensor, torch.Tensor, list]] = {}
        original = projection.forward

        def project(x: torch.Tensor) -> torch.Tensor:
            return original(x) if self.projected is None else self.projected

        projection.forward = project
        self._project_text = original
        for index, attn in enumerate(attentions):
            attn.set_processor(_CachedCrossAttention(attn.processor, self, index))

    @classmethod
    def install(cls, model: torch.nn.Module, projection: torch.nn.Module, attentions: list[Any]) -> TextKV:
        existing = getattr(model, "_vidserve_text_kv", None)
        if existing is None:
            existing = cls(model, projection, attentions)
            model._vidserve_text_kv = existing
        return existing

    @torch.no_grad()
    def of(self, embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One prompt's cross-attention (key, value) in each block, each (1, L, heads, head_dim)."""
        projected = self._project_text(embeds)
        kv = []
        for attn in self.attentions:
            key = attn.norm_k(attn.to_k(projected)).unflatten(2, (attn.heads, -1))
            value = attn.to_v(projected).unflatten(2, (attn.heads, -1))
            kv.append((key, value))
        return kv

    def activate(self, rows: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """The forward's rows (in row order) for the processors to hand out."""
        self.kv = rows
        key = rows[0][0][0]
        # The projected text only feeds the cross-attention's key and value, which come from the cache now: a
        # zero-stride stand-in of the right shape costs nothing and cannot be mistaken for real states.
        length, width = key.shape[1], self.attentions[0].to_k.in_features
        self.projected = key.new_zeros(1, length, width).expand(len(rows), length, width)

    def deactivate(self) -> None:
        self.projected = self.kv = None

    def block_kv(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = None if self.hooks is None else self.hooks.rows  # a subset under first-block caching
        chosen = self.kv if rows is None else [self.kv[r] for r in rows.tolist()]
        ids = tuple(id(row) for row in chosen)
        stacked = self._stacked.get(index)
        if stacked is None or stacked[0] != ids:
            keys = torch.cat([row[index][0] for row in chosen])
            values = torch.cat([row[index][1] for row in chosen])
            # The ids stay valid while the stack holds: each row's list is alive as long as its request runs.
            stacked = self._stacked[index] = (ids, keys, values, chosen)
        return stacked[1], stacked[2]


class _CachedCrossAttention:
    """Cross-attention with the text key/value taken from `TextKV`; diffusers' processor when it is inactive.

    Follows WanAttnProcessor and LTXVideoAttnProcessor for the query path, the mask and the output projection.
    """

    def __init__(self, original: Any, text_kv: TextKV, index: int) -> None:
        self.original = original
        self.text_kv = text_kv
        self.index = index

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.text_kv.kv is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        key, value = self.text_kv.block_kv(self.index)
        if attention_mask is not None:  # LTX: the text padding mask, as its processor prepares it
            batch_size, sequence_length = key.shape[0], key.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=getattr(self.original, "_attention_backend", None),
            parallel_config=None,
        )
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)
