"""The contract of a packed forward: one transformer call over rows of any shape, text length and timestep.

A family that implements `PackedForward` serves every running request in one forward per model and iteration
(Orca's selective batching): token-wise layers run on all rows' tokens concatenated, attention stays per row
(engine.attention). The runner drives `embed`, then each block, then `head`, so it can drop rows out between
blocks (first-block caching) and the layer split can cut between blocks and ship a `PackedState`.

For the next family author, the rules in one place:
- A `PackedRow` is one branch of one request: its latents (C, F, H, W) of any shape, its own 0-d timestep (or
  one per latent frame where the family offers it), its own `TextEmbedding`, when the family offers reusable
  text projections that row's cached `text_kv`, and where the latents do not show the row's positions (LTX's
  are already patchified), `positions` from the adapter's `row_positions`.
- `embed(rows)` returns a `PackedState` whose `hidden` is (1, T, D): the rows' tokens one after another, in
  row order, with `tokens` their counts. Joint-attention families pack `[text; video]` per row in `hidden`.
- Whatever else the blocks need goes into `per_token` (tensors laid out like `hidden` along dim 1, e.g. a
  per-token rotary table) or `per_row` (lists with one entry per row, e.g. each row's timestep embedding or
  text K/V); `PackedState.select` then keeps any subset of rows without knowing the family.
- `block(index, state)` returns the state after block `index`; it may only change `hidden` and `per_token`
  (a joint block that updates its text tokens keeps them in `hidden`, or in `per_token`).
- `head(state)` returns one prediction per row, in row order, each shaped as the diffusers model returns it for
  that row alone ((1, C, F, H, W) for Wan, (1, tokens, C) for LTX).
- Outputs must equal the diffusers model's forward of each row alone to float32 rounding (the exactness tests
  hold them to 1e-5 on the frames): per-row timestep modulation, per-row positions, per-row text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from engine.attention import Segments

if TYPE_CHECKING:
    from engine.families.base import TextEmbedding


@dataclass
class PackedRow:
    """One row of a packed forward: one request's conditional or unconditional branch at its current step."""

    latents: torch.Tensor  # (C, F, H, W), or (1, C, F, H, W): the row's own shape
    # 0-d: the row's own timestep; or (F,), one per latent frame, whose tokens take it (only for adapters whose
    # `embeds_frame_timesteps()`: a continuation's clean context frames at 0).
    timestep: torch.Tensor
    text: TextEmbedding  # the row's prompt (or negative prompt) at its own length
    # The family's reusable projections of `text` for this model (`PackedForward.text_kv`), or None: computed in
    # the forward. Exact either way; reuse saves projecting the text again at every step.
    text_kv: Any = None
    # What places the row's tokens where its latents do not say (`FamilyAdapter.row_positions`), else None.
    positions: Any = None
    # The request's guidance scale, for families whose transformer embeds it (guidance-distilled HunyuanVideo).
    guidance: float | None = None


@dataclass
class PackedState:
    """What a packed forward carries between its blocks (and between layer-split stages)."""

    hidden: torch.Tensor  # (1, T, D): every row's tokens, in row order
    tokens: Segments  # tokens per row in `hidden`
    shapes: list[tuple[int, ...]]  # per row: the latent shape (C, F, H, W) the head unpatchifies to
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)  # (1, T, ...) like `hidden`
    per_row: dict[str, list[Any]] = field(default_factory=dict)  # one entry per row

    @property
    def num_rows(self) -> int:
        return len(self.tokens)

    def row_hidden(self, row: int) -> torch.Tensor:
        return self.hidden[:, self.tokens.slice(row)]

    def select(self, rows: list[int]) -> PackedState:
        """The state of the chosen rows only, in the given order (copies their tokens)."""
        if list(rows) == list(range(self.num_rows)):
            return self
        index = self.tokens.token_index(rows, self.hidden.device)
        return PackedState(
            hidden=self.hidden.index_select(1, index),
            tokens=self.tokens.select(rows),
            shapes=[self.shapes[r] for r in rows],
            per_token={k: v.index_select(1, index) for k, v in self.per_token.items()},
            per_row={k: [v[r] for r in rows] for k, v in self.per_row.items()},
        )

    def with_rows_hidden(self, parts: list[torch.Tensor]) -> PackedState:
        """The same rows with new hidden states, given per row as (1, n_row, D) in row order."""
        return replace(self, hidden=torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def to_message(self) -> dict[str, Any]:
        """Plain containers of tensors, for the layer split's transport."""
        return {
            "hidden": self.hidden,
            "tokens": list(self.tokens.lengths),
            "shapes": [list(s) for s in self.shapes],
            "per_token": dict(self.per_token),
            "per_row": dict(self.per_row),
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> PackedState:
        return cls(
            hidden=message["hidden"],
            tokens=Segments(tuple(message["tokens"])),
            shapes=[tuple(s) for s in message["shapes"]],
            per_token=dict(message["per_token"]),
            per_row={k: list(v) for k, v in message["per_row"].items()},
        )


def text_keys(projected: torch.Tensor, bias: torch.Tensor | None = None) -> dict[str, Any]:
    """A cross-attention family's reusable text projections of one prompt (what `PackedForward.text_kv` returns).

    `projected` (1, L', D) is the prompt's projected text, `bias` an optional (L',) logit bias per key; each block's
    key and value are computed on first use (`block_kv`) and kept, so a request's cached entry serves every step.
    A plain dict of tensors, so the layer split ships it as it is; a stage computes the blocks it holds.
    """
    return {"projected": projected, "bias": bias, "blocks": {}}


def block_kv(entry: dict[str, Any], index: int, attn: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Block `index`'s cross-attention key and value, (1, L', heads, d), from `text_keys`' entry (diffusers'
    `Attention` naming: the key normalised across heads before the heads split, as Wan and LTX do)."""
    kv = entry["blocks"].get(index)
    if kv is None:
        projected = entry["projected"]
        key = attn.norm_k(attn.to_k(projected)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(projected).unflatten(2, (attn.heads, -1))
        kv = entry["blocks"][index] = (key, value)
    return kv


class PackedForward(Protocol):
    """A family's transformer forward over packed rows, built on one loaded diffusers model's weights."""

    model: torch.nn.Module
    num_blocks: int

    def text_kv(self, text: TextEmbedding) -> Any:
        """The row-independent projections of one prompt that every step reuses (None where there are none)."""
        ...

    def tokens(self, latent_shape: tuple[int, ...], text: TextEmbedding) -> int:
        """Tokens one row of this shape and text adds to a packed forward (the planner's budget unit)."""
        ...

    def embed(self, rows: list[PackedRow]) -> PackedState:
        """Patch embedding, timestep and text conditioning, positions: the state before block 0."""
        ...

    def block(self, index: int, state: PackedState) -> PackedState:
        """Transformer block `index` over the packed rows."""
        ...

    def head(self, state: PackedState) -> list[torch.Tensor]:
        """Output norm, projection and unpatchify: one prediction per row, in row order, shaped as the model's."""
        ...
