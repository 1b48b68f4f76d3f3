"""Where each family's transformer splits: its block lists, the output head the last stage runs, and that head.

The first stage runs the model's own forward up to the first block it does not hold, so embeddings never need
re-implementing here; only the few lines after the blocks (norm, projection, unpatchify) are written per family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.families.cogvideox import CogVideoXPackedForward
from engine.families.hunyuanvideo import HunyuanVideoPackedForward
from engine.families.ltx import LTXPackedForward
from engine.families.mochi import MochiPackedForward
from engine.families.wan import WanPackedForward
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


def _wan_tail(model, hidden, call, extras, shape):
    temb = extras[0]
    batch, _, frames, height, width = shape
    p_t, p_h, p_w = model.config.patch_size
    if temb.ndim == 3:
        shift, scale = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    hidden = (model.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
    hidden = hidden.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _cogvideox_tail(model, hidden, call, extras, shape):
    emb = call_arg(call, 2, "temb")
    batch, frames, _, height, width = shape
    hidden = model.norm_final(hidden)
    hidden = model.norm_out(hidden, temb=emb)
    hidden = model.proj_out(hidden)
    p, p_t = model.config.patch_size, model.config.patch_size_t
    if p_t is None:
        out = hidden.reshape(batch, frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
    out = hidden.reshape(batch, (frames + p_t - 1) // p_t, height // p, width // p, -1, p_t, p, p)
    return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)


def _hunyuan_tail(model, hidden, call, extras, shape):
    temb = call_arg(call, 2, "temb")
    batch, _, frames, height, width = shape
    p, p_t = model.config.patch_size, model.config.patch_size_t
    hidden = model.norm_out(hidden, temb)
    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
    hidden = hidden.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _mochi_tail(model, hidden, call, extras, shape):
    temb = call_arg(call, 2, "temb")
    batch, _, frames, height, width = shape
    p = model.config.patch_size
    hidden = model.norm_out(hidden, temb)
    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch, frames, height // p, width // p, p, p, -1)
    hidden = hidden.permute(0, 6, 1, 2, 4, 3, 5)
    return hidden.reshape(batch, -1, frames, height, width)


def _ltx_tail(model, hidden, call, extras, shape):
    embedded_timestep = extras[0]
    embedded_timestep = embedded_timestep.view(shape[0], -1, embedded_timestep.size(-1))
    values = model.scale_shift_table[None, None] + embedded_timestep[:, :, None]
    shift, scale = values[:, :, 0], values[:, :, 1]
    hidden = model.norm_out(hidden)
    hidden = hidden * (1 + scale) + shift
    return model.proj_out(hidden)


LAYOUTS: dict[str, Layout] = {
    "wan": Layout(
        ("blocks",),
        ("norm_out", "proj_out", "scale_shift_table"),
        _wan_tail,
        (("condition_embedder", 0),),
        packed=WanPackedForward,
    ),
    "cogvideox": Layout(
        ("transformer_blocks",),
        ("norm_final", "norm_out", "proj_out"),
        _cogvideox_tail,
        packed=CogVideoXPackedForward,
    ),
    "hunyuanvideo": Layout(
        ("transformer_blocks", "single_transformer_blocks"),
        ("norm_out", "proj_out"),
        _hunyuan_tail,
        packed=HunyuanVideoPackedForward,
    ),
    "mochi": Layout(
        ("transformer_blocks",),
        ("norm_out", "proj_out"),
        _mochi_tail,
        shared=("pos_frequencies",),
        packed=MochiPackedForward,
    ),
    "ltx": Layout(
        ("transformer_blocks",),
        ("norm_out", "proj_out", "scale_shift_table"),
        _ltx_tail,
        (("time_embed", 1),),
        packed=LTXPackedForward,
    ),
}


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
