"""Balancing a transformer's blocks over stages by parameter count, and loading one stage's share of a checkpoint.

A stage process builds the transformer with its parameters on the meta device (no memory) and reads only the
safetensors entries it owns, so each device holds about 1/S of the weights; the rest stay meta, never touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.layer_split.layout import Layout, block_prefixes, blocks_of, owner_of_key


@dataclass(frozen=True)
class SplitPlan:
    """One transformer over S stages: stage s runs blocks `ranges[s]` (call order)."""

    ranges: tuple[range, ...]
    stage_params: tuple[int, ...]  # parameters each stage holds (blocks + head or output head)
    block_params: tuple[int, ...]  # of those, parameters in blocks

    def describe(self) -> str:
        parts = [
            f"stage {s}: blocks {r.start}-{r.stop - 1} ({b:,} block / {p:,} total parameters)"
            for s, (r, p, b) in enumerate(zip(self.ranges, self.stage_params, self.block_params, strict=True))
        ]
        return "; ".join(parts)


def _numel(module: torch.nn.Module | torch.nn.Parameter | None) -> int:
    if module is None:
        return 0
    if isinstance(module, torch.nn.Parameter):
        return module.numel()
    return sum(p.numel() for p in module.parameters())


def plan_split(model: torch.nn.Module, layout: Layout, stages: int) -> SplitPlan:
    """Contiguous block ranges minimising the largest stage; the head counts on stage 0, the output head on the last."""
    blocks = [_numel(b) for b in blocks_of(model, layout)]
    if len(blocks) < stages:
        raise ValueError(f"cannot split {len(blocks)} transformer blocks over {stages} stages")
    tail = sum(_numel(getattr(model, name, None)) for name in layout.tail)
    head = sum(p.numel() for p in model.parameters()) - sum(blocks) - tail
    n = len(blocks)
    prefix = [0]
    for count in blocks:
        prefix.append(prefix[-1] + count)

    def load(stage: int, start: int, stop: int) -> int:
        return prefix[stop] - prefix[start] + (head if stage == 0 else 0) + (tail if stage == stages - 1 else 0)

    # best[s][i]: the smallest possible largest load when stages s.. hold blocks i..; every stage gets a block.
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[stages][n] = 0
    for s in range(stages - 1, -1, -1):
        for i in range(n):
            last_stop = n if s == stages - 1 else n - (stages - 1 - s)
            for j in range(i + 1, last_stop + 1):
                if s == stages - 1 and j != n:
                    continue
                value = max(load(s, i, j), best[s + 1][j])
                if value < best[s][i]:
                    best[s][i], cut[s][i] = value, j
    ranges, start = [], 0
    for s in range(stages):
        stop = cut[s][start]
        ranges.append(range(start, stop))
        start = stop
    return SplitPlan(
        ranges=tuple(ranges),
        stage_params=tuple(load(s, r.start, r.stop) for s, r in enumerate(ranges)),
        block_params=tuple(prefix[r.stop] - prefix[r.start] for r in ranges),
    )


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device and buffers real (rotary tables are computed at init)."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            moved = module._parameters[name].to("meta")
            module._parameters[name] = torch.nn.Parameter(moved, requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def _checkpoint_files(folder: Path) -> dict[str, Path]:
    """Key -> safetensors file, for a single-file or a sharded (index.json) diffusers checkpoint."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors checkpoint in {folder}")
    from safetensors import safe_open

    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            out.update(dict.fromkeys(handle.keys(), file))
    return out


def load_stage(
    folder: str | Path, layout: Layout, plan: SplitPlan, stage: int, dtype: torch.dtype, device: str
) -> torch.nn.Module:
    """The transformer in `folder` with only this stage's parameters loaded (on `device`); the others stay meta."""
    import diffusers
    from safetensors import safe_open

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    with _parameters_on_meta():
        model = cls.from_config(config)
    prefixes = block_prefixes(model, layout)
    wanted: dict[Path, list[str]] = {}
    for key, file in _checkpoint_files(folder).items():
        if stage in owner_of_key(key, layout, prefixes, list(plan.ranges)):
            wanted.setdefault(file, []).append(key)
    keep_fp32 = tuple(getattr(cls, "_keep_in_fp32_modules", None) or ())
    state = {}
    for file, keys in wanted.items():
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in keys:
                tensor = handle.get_tensor(key)
                # As from_pretrained does: some modules stay float32 under a half-precision dtype.
                target = torch.float32 if any(m in key.split(".") for m in keep_fp32) else dtype
                state[key] = tensor.to(device=device, dtype=target if tensor.is_floating_point() else tensor.dtype)
    model.load_state_dict(state, strict=False, assign=True)
    for buffer_owner in model.modules():
        for name, buffer in list(buffer_owner._buffers.items()):
            if buffer is not None and not buffer.is_meta:
                buffer_owner._buffers[name] = buffer.to(device)
    model.requires_grad_(False)
    return model.eval()


def drop_unowned(model: torch.nn.Module, layout: Layout, plan: SplitPlan, stage: int) -> None:
    """Free (move to meta) every parameter of an already loaded model that this stage does not own."""
    prefixes = block_prefixes(model, layout)
    ranges = list(plan.ranges)
    for name, param in list(model.named_parameters()):
        if stage in owner_of_key(name, layout, prefixes, ranges):
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        owner._parameters[attr] = torch.nn.Parameter(param.detach().to("meta"), requires_grad=False)


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters actually held (not meta)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)
