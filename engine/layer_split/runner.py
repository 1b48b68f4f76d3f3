"""The layer-split runner: stage 0 in the engine process, stages 1..S-1 in processes it starts, pipelined.

Each iteration's planner groups become micro-batches: stage 0 runs a group's embeddings and first blocks and
hands it on, then starts the next group while later stages work, so up to S groups are in flight. A stage that
dies fails the in-flight forwards with `StageFailed` at once (no hang); the stages restart before the next one.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import os
import time
from typing import Any

import torch

from engine import families
from engine.families.base import FamilyAdapter
from engine.layer_split.checkpoint import SplitPlan, drop_unowned, plan_split
from engine.layer_split.layout import blocks_of
from engine.layer_split.stage import StageModel, StageSpec, encode_rope_call, stage_main, strip_rope
from engine.layer_split.transport import Channel, checked_wait, make_group
from engine.planner import Batch
from engine.request import EngineError
from engine.runner import ForwardResult, guide_grouped, guide_rows, packed_rows

log = logging.getLogger(__name__)


class StageFailed(EngineError):
    """A layer-split stage process died or stopped answering; the forwards it held failed."""


class _Handoff(Exception):
    """Raised at the first block stage 0 does not hold: carries that block's call out of the model's forward."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("layer-split handoff")
        self.args_, self.kwargs_ = args, kwargs


def stage_devices(devices: tuple[str, ...], stages: int) -> tuple[str, ...]:
    """One device per stage: the registry's list, or its one device for every stage (CPU, or stages sharing a GPU)."""
    if len(devices) >= stages:
        return tuple(devices[:stages])
    return tuple(devices[0] for _ in range(stages))


class SplitRunner:
    """The `Runner` over S stages: `run_all(batches)` pipelines them through the stages, `close()` ends them."""

    def __init__(self, adapter: FamilyAdapter, spec: Any, stages: int, start_timeout_s: float = 300.0) -> None:
        self.adapter = adapter
        self.layout = families.get(adapter.family).parts.layout
        self.stages = stages
        self.start_timeout_s = start_timeout_s
        self.models = adapter.models()
        pipe = adapter.pipe
        components = [name for name in ("transformer", "transformer_2") if getattr(pipe, name, None) is not None]
        self.plans: tuple[SplitPlan, ...] = tuple(plan_split(m, self.layout, stages) for m in self.models)
        for model, plan in zip(self.models, self.plans, strict=True):
            log.info("layer split of %s: %s", spec.name, plan.describe())
            drop_unowned(model, self.layout, plan, 0)  # stage 0 keeps the head and its own blocks only
        self.devices = stage_devices(tuple(spec.devices), stages)
        self.spec = StageSpec(
            family=adapter.family,
            folders=tuple(os.path.join(spec.path, c) for c in components),
            plans=self.plans,
            dtype=spec.dtype,
            devices=self.devices,
            threads=torch.get_num_threads(),
        )
        self.stage0 = StageModel(self.models, self.layout, self.plans, 0, self.devices[0])
        # Packing families ship a PackedState between stages: one micro-batch holds rows of any shape.
        self.packed = adapter.packs and self.layout.packed is not None
        self._captured: dict[str, Any] = {}
        self._install_capture()
        self._procs: list[multiprocessing.Process] = []
        self._channel: Channel | None = None
        self._broken: str | None = None
        self.pipeline_s = 0.0  # wall time stage 0 spent inside pipelined forwards (for the idle fraction)
        self.forwards = 0
        self.restarts = 0
        self._start()

    # --- stage processes ------------------------------------------------------------------------

    def _start(self) -> None:
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=self.spec.timeout_s)
        # Not waiting for workers here: the stages connect while they load, and we watch them meanwhile.
        store = dist.TCPStore("127.0.0.1", 0, self.stages, True, timeout, wait_for_workers=False)
        context = multiprocessing.get_context("spawn")
        self._procs = []
        for rank in range(1, self.stages):
            proc = context.Process(
                target=stage_main, args=(rank, self.stages, store.port, self.spec), name=f"vidserve-stage-{rank}"
            )
            proc.daemon = True  # never outlives the engine process
            proc.start()
            self._procs.append(proc)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            for rank in range(1, self.stages):
                while not store.check([f"ready{rank}"]):
                    if store.check([f"error{rank}"]):
                        raise StageFailed(f"stage {rank} could not load: {store.get(f'error{rank}').decode()}")
                    self._check_alive()
                    if time.monotonic() > deadline:
                        raise StageFailed(f"stage {rank} did not start within {self.start_timeout_s:.0f} s")
                    time.sleep(0.01)
            self._channel = Channel(make_group(store, 0, self.stages, self.devices[0], timeout), self.devices[0])
        except BaseException:
            self._stop_processes()
            raise
        self._store = store  # the store must outlive the group
        self._broken = None

    def _check_alive(self) -> None:
        for rank, proc in enumerate(self._procs, start=1):
            if not proc.is_alive():
                raise StageFailed(f"layer-split stage {rank} (pid {proc.pid}) died with exit code {proc.exitcode}")

    def _dead_stage(self, within_s: float = 2.0) -> StageFailed | None:
        """The error naming the stage that died, if one did (its process may take a moment to be reaped)."""
        deadline = time.monotonic() + within_s
        while True:
            try:
                self._check_alive()
            except StageFailed as failure:
                return failure
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def _stop_processes(self, grace_s: float = 5.0) -> None:
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        self._procs = []

    def _fail(self, reason: str) -> None:
        """After a failure the group is unusable: end every stage process; the next forward restarts them."""
        self._broken = reason
        self._channel = None
        self._stop_processes(grace_s=0.0)

    def stage_pids(self) -> list[int]:
        """Process ids of stages 1..S-1 (stage 0 is this process)."""
        return [p.pid for p in self._procs]

    def close(self) -> None:
        """End every stage process: a stop message down the chain, then terminate whatever has not exited."""
        if self._channel is not None and self._broken is None:
            try:
                wait = checked_wait(self._check_alive)
                self._channel.send({"op": "stop"}, 1, wait)
                self._channel.recv(self.stages - 1, wait)
            except Exception:  # a dead stage: terminated below
                log.warning("layer-split stages did not stop cleanly", exc_info=True)
        self._channel = None
        self._stop_processes()

    # --- stage 0 ----------------------------------------------------------------------------------

    def _install_capture(self) -> None:
        """Hooks on stage 0's models: the handoff at the first foreign block, the rotary call, the head's extras."""
        captured = self._captured
        for model, plan in zip(self.models, self.plans, strict=True):
            blocks = blocks_of(model, self.layout)

            def handoff(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
                raise _Handoff(args, kwargs)

            blocks[plan.ranges[0].stop].register_forward_pre_hook(handoff, with_kwargs=True)

            def rope_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
                captured["rope_call"], captured["rope"] = (args, kwargs), output

            if hasattr(model, "rope"):
                model.rope.register_forward_hook(rope_hook, with_kwargs=True)
            for index, (name, output_index) in enumerate(self.layout.extras):

                def extra_hook(module: torch.nn.Module, args: tuple, output: Any, i=index, o=output_index) -> None:
                    captured.setdefault("extras", {})[i] = output[o]

                getattr(model, name).register_forward_hook(extra_hook)

    def _head(self, tag: int, batch: Batch) -> dict[str, Any]:
        """Stage 0's part of one forward: the model's own embeddings, then its blocks; the message for stage 1."""
        if self.packed:
            return self._head_packed(tag, batch)
        call = self.adapter.model_call(batch.seqs)
        index = next(i for i, m in enumerate(self.models) if m is call.model)
        model = call.model
        self._captured.clear()
        try:  # stage 0's own blocks run inside the forward, before the handoff fires
            model(**call.kwargs, return_dict=False)
        except _Handoff as handoff:
            args, kwargs = list(handoff.args_), dict(handoff.kwargs_)
        else:
            raise RuntimeError("stage 0 ran the whole model: the handoff hook did not fire")
        latent = call.kwargs["hidden_states"]
        rope = self._captured.get("rope")
        rope_header = None
        if rope is not None:
            rope_args, rope_kwargs = self._captured["rope_call"]
            rope_header = encode_rope_call(model, latent, rope_args, rope_kwargs)
            args, kwargs = strip_rope((args, kwargs), rope)
        extras = [self._captured["extras"][i] for i in range(len(self.layout.extras))]
        message = {
            "op": "forward",
            "tag": tag,
            "model": index,
            "call": (args, kwargs),
            "rope": rope_header,
            "extras": extras,
            "shape": tuple(latent.shape),
        }
        return message

    def _head_packed(self, tag: int, batch: Batch) -> dict[str, Any]:
        """The packed forward's embedding and stage 0's blocks; the PackedState travels on."""
        index = self.adapter.expert(batch.seqs[0])
        packed = self.adapter.packed_forward(self.models[index])
        rows, _ = packed_rows(self.adapter, packed, batch.seqs, reuse_text=True)
        state = packed.embed(rows)
        for block in self.plans[index].ranges[0]:
            state = packed.block(block, state)
        message = state.to_message()
        if "text_kv" in message["per_row"]:  # each stage computes its own blocks' text keys from the projection
            message["per_row"]["text_kv"] = [{**e, "blocks": {}} for e in message["per_row"]["text_kv"]]
        return {"op": "forward", "tag": tag, "model": index, "packed": message}

    @torch.no_grad()
    def run_all(self, batches: list[Batch]) -> list[ForwardResult | BaseException]:
        """Every batch's forward with up to S in flight; per batch its predictions, or the error that failed it."""
        if self._broken is not None or self._channel is None:
            log.warning("restarting layer-split stages after: %s", self._broken)
            self.restarts += 1
            self._start()
        wait = checked_wait(self._check_alive)
        channel = self._channel
        start = time.perf_counter()
        outputs: dict[int, torch.Tensor] = {}
        pending: list = []
        try:
            sent = 0
            for tag, batch in enumerate(batches):
                head_start = time.perf_counter()
                message = self._head(tag, batch)
                self.stage0.busy_s += time.perf_counter() - head_start
                # Stay at most S micro-batches ahead of the outputs, so every stage has work and none queues many.
                while sent - len(outputs) >= self.stages:
                    reply = channel.recv(self.stages - 1, wait)
                    outputs[reply["tag"]] = reply["output"]
                # Left pending: the last stage may be sending an output back meanwhile (see Channel.send).
                pending += channel.send(message, 1, wait=None)
                sent += 1
            while len(outputs) < len(batches):
                reply = channel.recv(self.stages - 1, wait)
                outputs[reply["tag"]] = reply["output"]
            for work, _ in pending:
                wait(work)
        except StageFailed as exc:
            self._fail(str(exc))
            return [exc] * len(batches)
        except Exception as exc:  # a transport error: a peer went away mid-message
            failure = self._dead_stage() or StageFailed(f"layer-split pipeline failed: {type(exc).__name__}: {exc}")
            self._fail(str(failure))
            return [failure] * len(batches)
        finally:
            self.pipeline_s += time.perf_counter() - start
        self.forwards += len(batches)
        return [self._guide(batch, outputs[tag]) for tag, batch in enumerate(batches)]

    def _guide(self, batch: Batch, output: torch.Tensor | list[torch.Tensor]) -> ForwardResult:
        """Each request's own guidance on its own rows, as ModelRunner (packed: a request's rows are neighbours;
        otherwise conditional rows first, then unconditional)."""
        seqs = batch.seqs
        blocks = len(blocks_of(self.models[0], self.layout))
        if isinstance(output, list):
            owned, row = [], 0
            for seq in seqs:
                owned.append(list(range(row, row + seq.rows)))
                row += seq.rows
            preds = guide_rows(self.adapter, seqs, owned, output)
        else:
            preds = guide_grouped(self.adapter, seqs, output)
        return ForwardResult(preds, [False] * len(seqs), [seq.rows * blocks for seq in seqs], batch.tokens)

    # --- measurements ---------------------------------------------------------------------------

    def stage_stats(self) -> list[dict[str, Any]]:
        """Per stage: resident parameter bytes, peak RSS, busy seconds, and idle fraction of the pipelined time."""
        wait = checked_wait(self._check_alive)
        assert self._channel is not None
        self._channel.send({"op": "stats", "stages": [self.stage0.stats()]}, 1, wait)
        stages = self._channel.recv(self.stages - 1, wait)["stages"]
        for stage in stages:
            stage["idle_fraction"] = 1.0 - stage["busy_s"] / self.pipeline_s if self.pipeline_s else None
        return stages
