"""Per-request approximate step caching inside mixed batches: first-block residual reuse and TaylorSeer forecasts.

diffusers' cache hooks keep one state per module and treat the batch as one request; here each request keeps
its own state (`RequestCache`, on its Sequence) and the decision is taken per request, per step:
- `taylorseer`: on a forecast step the request leaves the iteration's forward altogether and takes the
  Taylor expansion of its own past outputs (finite differences over computed steps).
- `first_block`: every row runs the first transformer block; a request whose first-block residual changed
  less than its threshold since its last full step skips the other blocks (its rows leave the batch for them)
  and adds its cached residual of those blocks. The others still share the remaining blocks.
`BlockHooks` wraps a transformer's blocks once so that one forward can run blocks on a subset of its rows.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.cache_policy import FIRST_BLOCK, TAYLORSEER, CachePolicy

# Block arguments that hold one entry per row; everything else (rotary tables, flags) is shared by all rows.
DEFAULT_ROW_ARGS = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask", "encoder_attention_mask")


@dataclass
class RequestCache:
    """One request's approximate-cache state."""

    policy: CachePolicy
    # first_block: the first block's residual at the last full step, the other blocks' residuals then, and which
    # model produced them (a two-expert Wan switches model mid-way; residuals never cross models).
    head_residual: torch.Tensor | None = None
    tail_residual: tuple[torch.Tensor | None, ...] | None = None
    model_id: int | None = None
    # taylorseer: output and its finite differences (per step) at the last computed step.
    derivatives: list[torch.Tensor] = field(default_factory=list)
    last_computed: int | None = None

    # --- resume ----------------------------------------------------------------------------------------

    def state(self, models: list[torch.nn.Module]) -> dict[str, Any]:
        """What a resumed request needs to make the same cache decisions (the model as its index in `models`)."""
        model = next((i for i, m in enumerate(models) if id(m) == self.model_id), None)
        return {
            "head_residual": self.head_residual,
            "tail_residual": self.tail_residual,
            "model": model,
            "derivatives": list(self.derivatives),
            "last_computed": self.last_computed,
        }

    def restore(self, state: dict[str, Any], models: list[torch.nn.Module]) -> None:
        self.head_residual, self.tail_residual = state["head_residual"], state["tail_residual"]
        self.model_id = None if state["model"] is None else id(models[state["model"]])
        self.derivatives, self.last_computed = list(state["derivatives"]), state["last_computed"]

    # --- first_block -----------------------------------------------------------------------------------

    def reuses_tail(self, head_residual: torch.Tensor, model_id: int) -> bool:
        """Whether this step's first-block residual (rows, tokens, D) is close enough to reuse the tail blocks'.

        When the tail must run, the residual is remembered: compared against the last *computed* step, drift over
        skipped steps adds up and forces a full step, as TeaCache's accumulated distance does.
        """
        previous = self.head_residual
        reuse = False
        if (
            previous is not None
            and self.tail_residual is not None
            and self.model_id == model_id
            and previous.shape == head_residual.shape
        ):
            change = (head_residual - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
            reuse = bool(change < self.policy.threshold)
        if not reuse:
            self.head_residual, self.model_id = head_residual, model_id
        return reuse

    # --- taylorseer ------------------------------------------------------------------------------------

    def forecasts(self, step: int) -> bool:
        """Whether this step is served by a forecast instead of a forward."""
        p = self.policy
        if p.policy != TAYLORSEER or step < p.warmup or not self.derivatives:
            return False
        return (step - p.warmup) % p.interval != p.interval - 1

    def forecast(self, step: int) -> torch.Tensor:
        """The Taylor expansion of the computed outputs at `step`."""
        # Expanded in the step index, as TaylorSeer does: measured here, expanding in the (shifted, uneven)
        # timestep instead forecast worse (27.5 vs 31.1 dB on the small Wan mix).
        distance = step - self.last_computed
        out = self.derivatives[0]
        for order, derivative in enumerate(self.derivatives[1:], start=1):
            out = out + derivative * (distance**order / math.factorial(order))
        return out

    def record(self, step: int, output: torch.Tensor) -> None:
        """Keep a computed step's output and its differences with the previous computed one."""
        if self.policy.policy != TAYLORSEER:
            return
        updated = [output]
        if self.derivatives and self.last_computed is not None:
            gap = step - self.last_computed
            for i in range(min(self.policy.order, len(self.derivatives))):
                updated.append((updated[i] - self.derivatives[i]) / gap)
        self.derivatives, self.last_computed = updated, step


class ForwardCache:
    """One forward's first-block plan: rows per request, which requests may skip, and what each one did."""

    def __init__(
        self, rows: list[list[int]], caches: list[RequestCache | None], model: torch.nn.Module, num_blocks: int
    ) -> None:
        self.rows = rows
        self.num_blocks = num_blocks
        self.caches = caches
        self.model_id = id(model)
        self.total_rows = sum(len(r) for r in rows)
        self.reused = [False] * len(rows)
        self.head_output: torch.Tensor | None = None
        self.compute_index: torch.Tensor | None = None  # None: every row runs the tail blocks
        self.pair_output = False

    def decide(self, block_input: torch.Tensor, block_output: torch.Tensor) -> None:
        """After the first block: per request, reuse the tail or compute it (and remember the residual)."""
        self.head_output = block_output
        residual = block_output - block_input
        for i, (rows, cache) in enumerate(zip(self.rows, self.caches, strict=True)):
            if cache is None or cache.policy.policy != FIRST_BLOCK or self.num_blocks < 2:
                continue  # a one-block model has no tail to reuse
            self.reused[i] = cache.reuses_tail(residual[rows], self.model_id)
        if any(self.reused):
            keep = [r for rows, reused in zip(self.rows, self.reused, strict=True) if not reused for r in rows]
            self.compute_index = torch.tensor(keep, dtype=torch.long, device=block_output.device)

    def finish(self, hidden: torch.Tensor, encoder: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """After the last block: reused requests add their cached tail residual; computed ones store theirs."""
        hidden = hidden.clone() if any(self.reused) else hidden
        for rows, cache, reused in zip(self.rows, self.caches, self.reused, strict=True):
            if cache is None or cache.policy.policy != FIRST_BLOCK:
                continue
            if reused:
                hidden[rows] = self.head_output[rows] + cache.tail_residual[0]
            else:
                cache.tail_residual = (hidden[rows] - self.head_output[rows],)
        return hidden, encoder

    def block_evaluations(self) -> list[int]:
        pairs = zip(self.rows, self.reused, strict=True)
        return [len(rows) * (1 if reused else self.num_blocks) for rows, reused in pairs]


class BlockHooks:
    """Wraps a transformer's blocks (in call order) so a forward can skip the tail blocks for some rows.

    Inactive (`plan` None) the wrappers call the blocks unchanged. Also carries the rows now running
    (`rows`), which the text K/V cache reads to hand each block the projections of those rows only.
    """

    def __init__(self, blocks: list[torch.nn.Module], row_args: tuple[str, ...]) -> None:
        self.blocks = blocks
        self.row_args = row_args
        self.plan: ForwardCache | None = None
        self.rows: torch.Tensor | None = None
        for index, block in enumerate(blocks):
            block.forward = self._wrap(block.forward, index)

    @classmethod
    def install(cls, model: torch.nn.Module, blocks: list[torch.nn.Module], row_args: tuple[str, ...]) -> BlockHooks:
        """The model's hooks, installed once (a model may serve several engines, e.g. in the benchmark)."""
        hooks = getattr(model, "_vidserve_block_hooks", None)
        if hooks is None:
            hooks = cls(blocks, row_args)
            model._vidserve_block_hooks = hooks
        return hooks

    def _wrap(self, forward: Callable[..., Any], index: int) -> Callable[..., Any]:
        signature = inspect.signature(forward)
        last = len(self.blocks) - 1

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            plan = self.plan
            if plan is None:
                return forward(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            hidden = bound.arguments["hidden_states"]
            if index == 0:
                out = forward(*args, **kwargs)
                # Joint-attention blocks (CogVideoX, Mochi, HunyuanVideo) return (hidden, text), the others hidden.
                plan.pair_output = isinstance(out, tuple)
                plan.decide(hidden, out[0] if plan.pair_output else out)
            elif plan.compute_index is None:
                out = forward(*args, **kwargs)
            else:
                out = self._run_rows(forward, bound, plan.compute_index)
            if index == last:
                if isinstance(out, tuple):
                    out = plan.finish(out[0], out[1])
                else:
                    out = plan.finish(out, None)[0]
            return out

        return wrapped

    def _run_rows(self, forward: Callable[..., Any], bound: inspect.BoundArguments, index: torch.Tensor) -> Any:
        """Run the block on the computed rows only; reused rows pass through unchanged."""
        total = bound.arguments["hidden_states"].shape[0]
        passthrough = (bound.arguments["hidden_states"], bound.arguments.get("encoder_hidden_states"))
        if index.numel() == 0:
            return passthrough if self.plan.pair_output else passthrough[0]
        for name in self.row_args:
            if name in bound.arguments:
                bound.arguments[name] = _rows(bound.arguments[name], index, total)
        self.rows = index
        try:
            out = forward(*bound.args, **bound.kwargs)
        finally:
            self.rows = None
        if isinstance(out, tuple):
            hidden, encoder = passthrough[0].clone(), passthrough[1].clone()
            hidden[index], encoder[index] = out[0], out[1]
            return hidden, encoder
        hidden = passthrough[0].clone()
        hidden[index] = out
        return hidden


def _rows(value: Any, index: torch.Tensor, total: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == total:
        if value.stride(0) == 0:  # one value broadcast over the rows: narrowing it copies nothing
            return value.narrow(0, 0, index.numel())
        return value.index_select(0, index)
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, index, total) for v in value)
    return value
