"""Attention over packed tokens: the one place the engine chooses attention kernels.

A packed forward concatenates the tokens of many rows (requests' conditional and unconditional branches, of any
shape) into one sequence; attention must still see only each row's own tokens. `Segments` says where each row's
tokens lie; `self_attention` is block-diagonal over them and `cross_attention` gives each row its own keys.

Kernels. CPU: one SDPA call per run of equal-length neighbouring rows (a request's conditional and unconditional
rows are neighbours of equal length). Measured on the 2-core CPU (16 rows of 20-96 tokens, 6 heads x 48, torch
2.13, a busy machine: load average 11): against per-row SDPA, a dense block-diagonal mask took 0.55x the time at
this size but grows with the square of all tokens (10k tokens: a 100M-entry mask), torch.nested jagged SDPA 7x
and FlexAttention without compile 4x (it materialises the full score matrix). Per-row SDPA also gives the
numbers of a request run alone, bit for bit.
CUDA: FlashAttention's varlen kernel when `flash_attn` is importable and the dtype is half precision, else the
per-row SDPA calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

try:  # optional CUDA kernel; the engine never requires it
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = None


@dataclass(frozen=True)
class Segments:
    """Token counts of the rows packed one after another along the token axis."""

    lengths: tuple[int, ...]

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each row's tokens, plus the total at the end (FlashAttention's cu_seqlens)."""
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return tuple(out)

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return len(self.lengths)

    def slice(self, row: int) -> slice:
        return slice(self.offsets[row], self.offsets[row + 1])

    def split(self, packed: torch.Tensor, dim: int = 1) -> list[torch.Tensor]:
        """Each row's part of a packed tensor (views, no copy)."""
        return list(packed.split(list(self.lengths), dim=dim))

    def select(self, rows: list[int]) -> Segments:
        return Segments(tuple(self.lengths[r] for r in rows))

    def token_index(self, rows: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Positions in the packed axis of the chosen rows' tokens, in the given row order."""
        parts = [torch.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]
        index = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return index.to(device)

    def expand(self, per_row: torch.Tensor) -> torch.Tensor:
        """(R, ...) values, one per row, repeated over each row's tokens: (1, T, ...)."""
        counts = torch.tensor(self.lengths, device=per_row.device)
        return per_row.repeat_interleave(counts, dim=0, output_size=self.total).unsqueeze(0)


def _runs(q_lengths: tuple[int, ...], kv_lengths: tuple[int, ...]) -> list[tuple[int, int]]:
    """(first row, row count) of maximal runs of neighbouring rows with equal query and key lengths."""
    runs: list[tuple[int, int]] = []
    for row, pair in enumerate(zip(q_lengths, kv_lengths, strict=True)):
        if runs and (q_lengths[runs[-1][0]], kv_lengths[runs[-1][0]]) == pair:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((row, 1))
    return runs


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(B, n, heads, d) in and out, as diffusers' native backend calls SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    return out.transpose(1, 2)


def _use_flash(q: torch.Tensor) -> bool:
    return flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Block-diagonal attention: packed (1, T, heads, d) queries, keys, values; each row attends to its own tokens."""
    if _use_flash(q):
        cu = torch.tensor(segments.offsets, dtype=torch.int32, device=q.device)
        longest = max(segments.lengths)
        return flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, longest, longest).unsqueeze(0)
    return _per_run(q, segments, k, v, segments, None)


def cross_attention(
    q: torch.Tensor,
    segments: Segments,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    key_bias: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Each row's packed queries attend to that row's own keys and values, each (1, L_row, heads, d).

    `key_bias` (optional, per row a (L_row,) additive logit bias or None) lets one key stand for several identical
    ones: a key repeated m times is one key with bias log(m), the same softmax at a fraction of the cost.
    """
    kv_segments = Segments(tuple(k.shape[1] for k in keys))
    has_bias = key_bias is not None and any(b is not None for b in key_bias)
    if _use_flash(q) and not has_bias:
        cu_q = torch.tensor(segments.offsets, dtype=torch.int32, device=q.device)
        cu_k = torch.tensor(kv_segments.offsets, dtype=torch.int32, device=q.device)
        k, v = torch.cat(keys, dim=1)[0], torch.cat(values, dim=1)[0]
        out = flash_attn_varlen_func(q[0], k, v, cu_q, cu_k, max(segments.lengths), max(kv_segments.lengths))
        return out.unsqueeze(0)
    biases = key_bias if has_bias else None
    return _per_run(q, segments, keys, values, kv_segments, biases)


def _per_run(
    q: torch.Tensor,
    segments: Segments,
    keys: torch.Tensor | list[torch.Tensor],
    values: torch.Tensor | list[torch.Tensor],
    kv_segments: Segments,
    biases: list[torch.Tensor | None] | None,
) -> torch.Tensor:
    """One SDPA call per run of equal-length neighbouring rows; packed keys are viewed, per-row lists stacked."""
    outs = []
    for first, count in _runs(segments.lengths, kv_segments.lengths):
        n, m = segments.lengths[first], kv_segments.lengths[first]
        rows = range(first, first + count)
        q_run = q[:, segments.offsets[first] : segments.offsets[first] + n * count].reshape(count, n, *q.shape[2:])
        if isinstance(keys, torch.Tensor):  # self-attention: keys packed like the queries
            start = kv_segments.offsets[first]
            k_run = keys[:, start : start + m * count].reshape(count, m, *keys.shape[2:])
            v_run = values[:, start : start + m * count].reshape(count, m, *values.shape[2:])
        else:
            k_run = keys[first] if count == 1 else torch.cat([keys[r] for r in rows])
            v_run = values[first] if count == 1 else torch.cat([values[r] for r in rows])
        bias = None
        if biases is not None:
            row_bias = [biases[r] if biases[r] is not None else q.new_zeros(m) for r in rows]
            bias = torch.stack(row_bias).view(count, 1, 1, m).to(q.dtype)
        outs.append(_sdpa(q_run, k_run, v_run, bias).reshape(1, n * count, *q.shape[2:]))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
