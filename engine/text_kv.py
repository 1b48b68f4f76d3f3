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
        self.hooks: BlockHooks | None = None  # set by the engine: which rows the blocks run now
        self.projected: torch.Tensor | None = None  # (rows, L, D) while a forward runs
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per block, (rows, L, heads, d) each
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
    def of(self, embeds: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One prompt's projected text (1, L, D) and each block's cross-attention (key, value)."""
        projected = self._project_text(embeds)
        kv = []
        for attn in self.attentions:
            key = attn.norm_k(attn.to_k(projected)).unflatten(2, (attn.heads, -1))
            value = attn.to_v(projected).unflatten(2, (attn.heads, -1))
            kv.append((key, value))
        return projected, kv

    def activate(self, rows: list[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]]) -> None:
        """Stack the forward's rows (in row order) for the projection and the processors to hand out."""
        self.projected = torch.cat([r[0] for r in rows])
        self.kv = [
            (torch.cat([r[1][i][0] for r in rows]), torch.cat([r[1][i][1] for r in rows]))
            for i in range(len(self.attentions))
        ]

    def deactivate(self) -> None:
        self.projected = self.kv = None

    def block_kv(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.kv[index]
        rows = None if self.hooks is None else self.hooks.rows
        if rows is not None:  # the block runs on a subset of the rows (first-block caching)
            key, value = key.index_select(0, rows), value.index_select(0, rows)
        return key, value


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
