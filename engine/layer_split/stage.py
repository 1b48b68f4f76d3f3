"""One pipeline stage: its share of each transformer, how it runs its blocks, and the stage process's loop.

Stage 0 lives in the engine process (it runs the model's own forward up to its first foreign block); stages
1..S-1 are processes started with spawn that receive a block call, run their blocks and pass it on; the last
stage runs the output head and returns the noise prediction to stage 0.
"""

from __future__ import annotations

import datetime
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

from engine.layer_split.checkpoint import SplitPlan, load_stage, resident_bytes
from engine.layer_split.layout import BlockCall, Layout, blocks_of
from engine.layer_split.transport import Channel, make_group
from engine.packing import PackedState

ROPE = "<rope: recomputed from the shape header>"  # stands in for rotary tables in a block call on the wire


@dataclass(frozen=True)
class StageSpec:
    """What a stage process needs to load its share (picklable: it crosses the spawn boundary)."""

    family: str
    folders: tuple[str, ...]  # one transformer folder per model (two-expert Wan has two)
    plans: tuple[SplitPlan, ...]
    dtype: str
    devices: tuple[str, ...]  # per stage
    threads: int
    timeout_s: float = 1800.0


def encode_rope_call(model: torch.nn.Module, latent: torch.Tensor, args: tuple, kwargs: dict) -> tuple:
    """The rotary module's call as a shape header: the latent by shape, model parameters by name."""
    params = {id(p): name for name, p in model.named_parameters()}

    def encode(value: Any) -> Any:
        if value is latent:
            return ("latent", tuple(value.shape), value.dtype)
        if isinstance(value, torch.Tensor) and id(value) in params:
            return ("param", params[id(value)])
        if isinstance(value, torch.device):
            return ("device",)
        return ("value", value)

    return [encode(a) for a in args], {k: encode(v) for k, v in kwargs.items()}


def decode_rope_call(model: torch.nn.Module, header: tuple, device: torch.device) -> Any:
    args, kwargs = header

    def decode(item: tuple) -> Any:
        kind = item[0]
        if kind == "latent":  # only its shape (and device) matter to the rotary tables
            return torch.zeros(item[1], dtype=item[2], device=device)
        if kind == "param":
            return model.get_parameter(item[1])
        if kind == "device":
            return device
        return item[1]

    return model.rope(*[decode(a) for a in args], **{k: decode(v) for k, v in kwargs.items()})


class StageModel:
    """This stage's blocks of each model; runs a block call through them."""

    def __init__(
        self, models: list[torch.nn.Module], layout: Layout, plans: tuple[SplitPlan, ...], stage: int, device: str
    ) -> None:
        self.models, self.layout, self.plans, self.stage = models, layout, plans, stage
        self.device = torch.device(device)
        self.blocks = [blocks_of(m, layout) for m in models]
        self.packed = [layout.packed(m) for m in models] if layout.packed is not None else None
        self.last = stage == len(plans[0].ranges) - 1
        self.busy_s = 0.0

    @torch.no_grad()
    def run_packed(self, message: dict[str, Any]) -> dict[str, Any] | list[torch.Tensor]:
        """This stage's blocks over a received PackedState; the message on, or each row's output on the last."""
        start = time.perf_counter()
        index = message["model"]
        packed = self.packed[index]
        state = PackedState.from_message(message["packed"])
        for block in self.plans[index].ranges[self.stage]:
            state = packed.block(block, state)
        out = packed.head(state) if self.last else {**message, "packed": state.to_message()}
        self.busy_s += time.perf_counter() - start
        return out

    @torch.no_grad()
    def run(self, message: dict[str, Any]) -> dict[str, Any] | torch.Tensor:
        """Run this stage's blocks on a received call; the message for the next stage, or the output on the last."""
        start = time.perf_counter()
        index = message["model"]
        model = self.models[index]
        args, kwargs = message["call"]
        rope = decode_rope_call(model, message["rope"], self.device) if message["rope"] is not None else None
        call: BlockCall = (
            [rope if _is_rope(a) else a for a in args],
            {k: (rope if _is_rope(v) else v) for k, v in kwargs.items()},
        )
        call = run_blocks(self.blocks[index], self.plans[index].ranges[self.stage], call)
        if self.last:
            hidden = call[0][0] if call[0] else call[1]["hidden_states"]
            out = self.layout.tail_fn(model, hidden, call, message["extras"], message["shape"])
            self.busy_s += time.perf_counter() - start
            return out
        if rope is not None:
            call = strip_rope(call, rope)
        self.busy_s += time.perf_counter() - start
        return {**message, "call": call}

    def stats(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "pid": os.getpid(),
            "param_bytes": sum(resident_bytes(m) for m in self.models),
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "busy_s": self.busy_s,
        }


def _is_rope(value: Any) -> bool:
    return isinstance(value, str) and value == ROPE


def run_blocks(blocks: list[torch.nn.Module], owned: range, call: BlockCall) -> BlockCall:
    """Blocks `owned` in order; hidden states (and the text states of joint-attention blocks) carry over."""
    args, kwargs = list(call[0]), dict(call[1])
    for index in owned:
        out = blocks[index](*args, **kwargs)
        hidden, text = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
        if args:
            args[0] = hidden
        else:
            kwargs["hidden_states"] = hidden
        if isinstance(out, tuple):
            if len(args) > 1:
                args[1] = text
            else:
                kwargs["encoder_hidden_states"] = text
    return args, kwargs


def strip_rope(call: BlockCall, rope: Any) -> BlockCall:
    """The call with its rotary tables replaced by a marker: the next stage recomputes them from the shape."""
    args, kwargs = call
    return [ROPE if a is rope else a for a in args], {k: (ROPE if v is rope else v) for k, v in kwargs.items()}


def stage_main(rank: int, world: int, port: int, spec: StageSpec) -> None:
    """Entry point of a stage process (rank >= 1): load this stage's share, then serve calls until told to stop."""
    import torch.distributed as dist

    torch.set_num_threads(max(1, spec.threads))
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    store = dist.TCPStore("127.0.0.1", port, world, False, timeout)
    device = spec.devices[rank]
    try:
        from engine import families
        from engine.families.base import DTYPES

        layout = families.get(spec.family).parts.layout
        models = [
            load_stage(folder, layout, plan, rank, DTYPES[spec.dtype], device)
            for folder, plan in zip(spec.folders, spec.plans, strict=True)
        ]
        stage = StageModel(models, layout, spec.plans, rank, device)
    except Exception as exc:  # reported to stage 0, which raises it as the engine's start-up error
        store.set(f"error{rank}", f"{type(exc).__name__}: {exc}")
        return
    store.set(f"ready{rank}", "1")
    channel = Channel(make_group(store, rank, world, device, timeout), device)
    following = 0 if stage.last else rank + 1
    while True:
        message = channel.recv(rank - 1)
        op = message["op"]
        if op == "forward":
            result = stage.run_packed(message) if "packed" in message else stage.run(message)
            if stage.last:
                channel.send({"op": "output", "tag": message["tag"], "output": result}, 0)
            else:
                channel.send(result, following)
        elif op == "stats":
            channel.send({**message, "stages": [*message["stages"], stage.stats()]}, following)
        elif op == "stop":
            channel.send(message, following)
            return
