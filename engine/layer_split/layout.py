"""Where a family's transformer splits: its block lists, the output head the last stage runs, and that head.

The first stage runs the model's own forward up to the first block it does not hold, so embeddings never need
re-implementing; only the few lines after the blocks (norm, projection, unpatchify) are written, in each family's
module (`FamilyParts.layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.packing import PackedForward

# (args, kwargs) of one block call: joint-attention families return (hidden, text) and both travel on.
BlockCall = tuple[list[Any], dict[str, Any]]
Tail = Callable[[torch.nn.Module, torch.Tensor, BlockCall, list[Any], tuple[int, ...]], torch.Tensor]


def call_arg(call: BlockCall, index: int, name: str) -> Any:
    """A block argument, whether the forward passed it by position or by name."""
    args, kwargs = call
    return args[index] if len(args) > index else kwargs[name]


def set_call_arg(call: BlockCall, index: int, name: str, value: Any) -> None:
    args, kwargs = call
    if len(args) > index:
        args[index] = value
    else:
        kwargs[name] = value


@dataclass(frozen=True)
class Layout:
    """One family's split points."""

    block_lists: tuple[str, ...]  # attributes holding the blocks, in the order the forward calls them
    tail: tuple[str, ...]  # top-level modules and parameters only the output head uses (last stage)
    tail_fn: Tail
    # Outputs of head modules the output head needs besides the block arguments: (module, output index).
    extras: tuple[tuple[str, int], ...] = ()
    shared: tuple[str, ...] = ()  # small parameters every stage keeps (positional tables)
    # The family's packed forward (engine.packing), when it has one: then stages pass a PackedState between blocks.
    packed: Callable[[torch.nn.Module], PackedForward] | None = None


def blocks_of(model: torch.nn.Module, layout: Layout) -> list[torch.nn.Module]:
    """Every block, in call order, over all of the layout's block lists."""
    return [block for name in layout.block_lists for block in getattr(model, name)]


def block_prefixes(model: torch.nn.Module, layout: Layout) -> list[str]:
    """The checkpoint key prefix of each block, in call order (e.g. "blocks.3.")."""
    return [f"{name}.{i}." for name in layout.block_lists for i in range(len(getattr(model, name)))]


def owner_of_key(key: str, layout: Layout, prefixes: list[str], ranges: list[range]) -> set[int]:
    """Which stages load a checkpoint key: a block's owner, the last stage for the head, the first otherwise."""
    last = len(ranges) - 1
    top = key.split(".", 1)[0]
    if top in layout.shared:
        return set(range(len(ranges)))
    if top in layout.tail:
        return {last}
    if top in layout.block_lists:
        name, index = key.split(".", 2)[:2]
        block = prefixes.index(f"{name}.{index}.")
        return {s for s, r in enumerate(ranges) if block in r}
    return {0}
