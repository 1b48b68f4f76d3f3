"""The engine: many concurrent requests, one background loop, step-level heterogeneous batching.

`Engine.step()` is the whole story: plan this iteration's forwards (the scheduler admits waiting requests and
picks the running ones), run them (the runner), advance every request's own scheduler, retire (decode) what
finished.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from engine import checkpoint
from engine.cache_policy import parse_cache
from engine.checkpoint import Checkpoint
from engine.families import adapter_class
from engine.families.base import FamilyAdapter
from engine.long_video import LongVideos, WindowView
from engine.planner import Batch, Planner
from engine.registry import ModelSpec
from engine.request import (
    CheckpointMismatch,
    FramesCallback,
    GenerationRequest,
    GenerationResult,
    RequestCanceled,
)
from engine.runner import ForwardResult, ModelRunner, Runner
from engine.scheduler import Scheduler
from engine.sequence import CheckpointCallback, ProgressCallback, Sequence, Status
from engine.step_cache import RequestCache
from engine.text_cache import TextCache

log = logging.getLogger(__name__)

# How often a loop whose every request is held (EngineConfig.hold) looks whether one was released or canceled.
HOLD_POLL_SECONDS = 0.02


@dataclass
class EngineConfig:
    """Batching and memory knobs. Those left unset come from the registry entry's [batch] table."""

    max_rows: int | None = None  # rows (requests x CFG branches) in one transformer forward
    max_tokens: int | None = None  # rows x (video patches + text tokens) in one forward
    max_running: int | None = None  # requests holding latents at once; default 2 x max_rows
    max_decode_batch: int | None = None  # finished videos of one shape decoded in one VAE call
    # A finished video may wait up to this many iterations for others of its shape about to finish, so they
    # share one VAE call (0: decode at once). Bounded, so latency grows by at most that many steps.
    decode_wait_steps: int | None = None
    vae_tiling: bool | None = None  # tiled / framewise VAE decoding for long or large videos
    output: str = "uint8"  # "uint8" frames, or "float32" in [0, 1] (exactness tests compare these)
    text_cache_size: int = 64  # recently encoded prompts kept (the empty negative prompt above all); 0: off
    # Cross-attention families: each request projects its text (and every block's text K/V) once, not per step.
    text_kv_cache: bool = True
    background: bool = True  # run the loop thread; False: the caller drives `step()` itself
    # A test hook: while `hold(request_id, step)` is true the request waits at that step and its batch mates go
    # on (a cancel still stops it), so a test can catch a request mid-way however fast or loaded the machine is.
    hold: Callable[[str, int], bool] | None = None

    @classmethod
    def from_kwargs(cls, spec: ModelSpec, kwargs: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown engine options: {sorted(unknown)}")
        config = cls(**kwargs)
        for name in ("max_rows", "max_tokens", "max_running", "max_decode_batch", "decode_wait_steps", "vae_tiling"):
            if getattr(config, name) is None:
                setattr(config, name, getattr(spec.batch, name))
        config.max_running = config.max_running or 2 * config.max_rows
        if config.output not in ("uint8", "float32"):
            raise ValueError("output must be 'uint8' or 'float32'")
        return config


class Engine:
    """Serves one registry model. Thread-safe `submit`; one loop thread runs the model."""

    def __init__(self, spec: ModelSpec, adapter: FamilyAdapter | None = None, **config: Any) -> None:
        self.spec = spec
        self.config = EngineConfig.from_kwargs(spec, config)
        self.adapter = adapter or adapter_class(spec.family).load(spec)
        if self.config.vae_tiling:
            self.adapter.enable_vae_tiling()
        self.planner = Planner(self.adapter, self.config.max_rows, self.config.max_tokens)
        self.runner: Runner
        if spec.stages > 1:
            from engine.layer_split import SplitRunner  # spawns the other stages' processes

            self.runner = SplitRunner(self.adapter, spec, spec.stages)
        else:
            self.runner = ModelRunner(self.adapter, self.config.text_kv_cache)
        self.long_videos = LongVideos(self.adapter, spec)
        self.texts = TextCache(
            self.adapter, self.config.text_cache_size, (spec.name, spec.path, *self.adapter.text_settings())
        )
        self.scheduler = Scheduler(
            self.config.max_running,
            self.config.max_decode_batch,
            self.config.decode_wait_steps,
            self.adapter.decode_key,
            self.config.hold,
        )
        self._thread: threading.Thread | None = None
        # OpenMP's thread count is per thread: the loop thread must adopt the intra-op thread count the
        # process set (torch.set_num_threads), or it runs with another one.
        self._intra_op_threads = torch.get_num_threads()
        if self.config.background:
            self._thread = threading.Thread(target=self._loop, name=f"engine-{spec.name}", daemon=True)
            self._thread.start()

    # --- the seam ------------------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        *,
        checkpoint_every: int = 0,
        on_checkpoint: CheckpointCallback | None = None,
        resume_from: Checkpoint | None = None,
        on_frames: FramesCallback | None = None,
    ) -> Future:
        """Queue a request; returns a Future of its GenerationResult. Raises InvalidRequest at once.

        `on_frames` streams the finished video: it receives the frames in order, a few at a time, on the loop
        thread as the VAE decodes them (Wan one latent frame, 4 frames, at a time; the other families in pieces of at
        most 9 to 13 frames, engine.vae), all before the future resolves; the result's `frames` is then None, so the
        video is never held whole.

        `on_checkpoint` receives the request's state (an engine.checkpoint.Checkpoint, on CPU) after every
        `checkpoint_every` steps, on the loop thread: it must return quickly. `resume_from` continues the request
        from such a state; one taken for another request or model raises CheckpointMismatch at once.
        """
        self.check(request)
        if resume_from is not None:
            if resume_from.fingerprint != self.fingerprint(request):
                raise CheckpointMismatch(f"checkpoint is not of request {request.id} on model {self.spec.name}")
            if not 0 < resume_from.step < resume_from.num_steps:
                raise CheckpointMismatch(f"checkpoint at step {resume_from.step} of {resume_from.num_steps}")
        seq = Sequence(
            request=request,
            future=Future(),
            on_progress=on_progress,
            checkpoint_every=checkpoint_every if on_checkpoint is not None else 0,
            on_checkpoint=on_checkpoint,
            resume_from=resume_from,
            on_frames=on_frames,
        )
        seq.future.set_running_or_notify_cancel()
        self.scheduler.add(seq)
        return seq.future

    def cancel(self, request_id: str) -> bool:
        """Stop a request before its next denoising step; its future raises RequestCanceled. False if unknown."""
        return self.scheduler.cancel(request_id)

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Serve a list of requests together; results in the same order."""
        requests = list(requests)
        for request in requests:
            self.check(request)  # all or nothing: reject before any of them computes
        with self.scheduler.lock:  # re-entrant: the loop cannot start an iteration between two of these submits
            futures = [self.submit(r) for r in requests]
        if not self.config.background:
            while not all(f.done() for f in futures):
                self.step()
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the loop; requests still queued or running fail with RequestCanceled."""
        self.scheduler.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.runner.close()  # layer split: ends every stage process
        for seq in self.scheduler.drain():
            if not seq.future.done():
                seq.future.set_exception(RequestCanceled("engine closed"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, request: GenerationRequest) -> None:
        """Registry limits and family rules, then the adapter's own checks; raises InvalidRequest."""
        self.spec.check_request(request)
        self.adapter.check_request(request)
        self.long_videos.check(request)

    def fingerprint(self, request: GenerationRequest) -> str:
        """What a checkpoint of this request on this model carries, so it is never used for another."""
        return checkpoint.fingerprint(self.spec, request)

    @property
    def num_unfinished(self) -> int:
        return self.scheduler.num_unfinished

    # --- one iteration -------------------------------------------------------------------------------

    def step(self) -> None:
        """One iteration: plan, run, advance, retire."""
        forecast, batches = self._plan()
        results = self.runner.run_all(batches)
        self._advance(forecast, batches, results)
        self._retire()
        self.scheduler.iteration += 1

    def _plan(self) -> tuple[list[Sequence], list[Batch]]:
        """Admit waiting requests; then the running ones' forwards, less those whose step cache forecasts this step.

        Long requests: windowed ones become their windows' rows, continuations get their context frames.
        """
        self._admit(self.scheduler.admit())
        running = self.scheduler.runnable()
        forecast = [s for s in running if s.cache is not None and s.cache.forecasts(s.step_index)]
        rows = self.long_videos.expand([s for s in running if s not in forecast], self.texts.embedding)
        return forecast, self.planner.plan(rows)

    def _admit(self, admitted: list[Sequence]) -> None:
        """Encode the admitted requests' prompts and prepare their latents and schedulers."""
        if not admitted:
            return
        try:
            self._encode_text(admitted)
        except Exception:
            # One bad prompt must fail only its own request: encode the admitted ones one by one.
            log.exception("batched text encoding of %d requests failed; encoding them one by one", len(admitted))
            for seq in admitted:
                try:
                    self._encode_text([seq])
                except Exception as exc:
                    self._finish(seq, exc)
            admitted = [seq for seq in admitted if not seq.future.done()]
        for seq in admitted:
            try:
                self._start(seq)
            except Exception as exc:  # a bad request must not take the loop down with it
                self._finish(seq, exc)

    def _encode_text(self, seqs: list[Sequence]) -> None:
        """Encode every new prompt in one batched call; identical prompts are encoded once."""
        encoded = self.texts.encode(prompt for seq in seqs for prompt in self._prompts_of(seq))
        for seq in seqs:
            cond, *uncond = self._prompts_of(seq)[: 2 if self.adapter.uses_cfg(seq.request) else 1]
            seq.cond = encoded[cond]
            seq.uncond = encoded[uncond[0]] if uncond else None

    def _prompts_of(self, seq: Sequence) -> list[str]:
        """The prompt, the negative prompt under guidance, then the long video's segment prompts."""
        request = seq.request
        prompts = [request.prompt, request.negative_prompt] if self.adapter.uses_cfg(request) else [request.prompt]
        return prompts + [prompt for _, prompt in request.segments]

    def _start(self, seq: Sequence) -> None:
        seq.generator = torch.Generator("cpu").manual_seed(seq.request.seed)
        seq.latents = self.adapter.prepare_latents(seq.request, seq.generator)
        self.adapter.set_timesteps(seq)
        policy = parse_cache(seq.request.cache, self.spec.options.get("cache_defaults"))
        seq.cache = RequestCache(policy) if policy.approximate else None
        seq.stats.cache_policy = policy.policy
        self.long_videos.start(seq)  # windows' FreeNoise or the first chunk, before a checkpoint is restored
        seq.status = Status.RUNNING
        seq.started_at = time.perf_counter()
        seq.stats.seconds_queued = seq.started_at - seq.submitted_at
        if seq.resume_from is not None:
            state, seq.resume_from = seq.resume_from, None
            checkpoint.restore(seq, self.adapter, state)
            self._report_progress(seq)  # progress goes on from the checkpoint's step

    def _checkpoint(self, seq: Sequence) -> None:
        """Hand the caller a copy of the request's state; a failure only logs (the request goes on)."""
        try:
            seq.on_checkpoint(checkpoint.snapshot(seq, self.adapter, self.fingerprint(seq.request)))
        except Exception:
            log.exception("checkpoint of request %s at step %d failed", seq.id, seq.step_index)

    def _report_progress(self, seq: Sequence) -> None:
        if seq.on_progress is None:
            return
        try:
            seq.on_progress(*self.long_videos.progress(seq))
        except Exception:  # a caller's callback must not break other requests
            log.exception("progress callback of request %s failed", seq.id)

    def _advance(
        self, forecast: list[Sequence], batches: list[Batch], results: list[ForwardResult | BaseException]
    ) -> None:
        """One scheduler step for every request of the iteration, from its forecast or its forward's prediction."""
        for seq in forecast:
            self._advance_one(seq, seq.cache.forecast(seq.step_index), reused=True)
        for batch, result in zip(batches, results, strict=True):
            if isinstance(result, BaseException):  # e.g. out of memory: fail this forward's requests, keep the others
                log.error("forward of %d requests failed", len(batch.seqs), exc_info=result)
                for seq in batch.seqs:
                    self._finish(seq.parent if isinstance(seq, WindowView) else seq, result)
                continue
            self._advance_batch(batch, result)
        for seq, noise_pred in self.long_videos.fused():  # every window ran: one scheduler step on the full latent
            self._advance_one(seq, noise_pred, reused=False)

    def _advance_batch(self, batch: Batch, result: ForwardResult) -> None:
        for i, (seq, noise_pred) in enumerate(zip(batch.seqs, result.noise_preds, strict=True)):
            if isinstance(seq, WindowView):  # fused with its request's other windows once all have run
                self.long_videos.collect(seq, noise_pred, result.block_evaluations[i], len(batch.seqs))
                seq.parent.stats.forward_tokens.append(result.tokens)
                continue
            seq.stats.block_evaluations += result.block_evaluations[i]
            seq.stats.batch_sizes.append(len(batch.seqs))
            seq.stats.forward_tokens.append(result.tokens)
            if seq.cache is not None:
                seq.cache.record(seq.step_index, noise_pred)
            self._advance_one(seq, noise_pred, reused=result.reused[i])

    def _advance_one(self, seq: Sequence, noise_pred: torch.Tensor, reused: bool) -> None:
        """One scheduler step for the request, its noise prediction computed or served from its cache."""
        self.adapter.scheduler_step(seq, noise_pred)
        seq.step_index += 1
        self.long_videos.after_step(seq)  # a continuation's chunk that finished is kept, the next begins
        if reused:
            seq.stats.steps_reused += 1
        else:
            seq.stats.steps_computed += 1
        self._report_progress(seq)
        if seq.checkpoint_every and seq.step_index % seq.checkpoint_every == 0 and not seq.done:
            self._checkpoint(seq)

    def _retire(self) -> None:
        """Decode finished requests, batched by shape as the scheduler says, and resolve their futures."""
        finished = self.scheduler.finished()
        for seq in [s for s in finished if self.long_videos.is_long(s) or s.on_frames is not None]:
            finished.remove(seq)
            self._stream(seq)
        for chunk in self.scheduler.decode_batches(finished):
            try:
                videos = self.adapter.decode(torch.cat([s.latents for s in chunk]), chunk)
            except Exception as exc:
                for seq in chunk:
                    self._finish(seq, exc)
                continue
            for seq, video in zip(chunk, videos, strict=True):
                self._finish(seq, video)

    def _stream(self, seq: Sequence) -> None:
        """Decode one request on its own, handing frames to `on_frames` as they come (long videos stream)."""
        try:
            pieces = self.long_videos.decode(seq, seq.latents)
            if seq.on_frames is None:
                self._finish(seq, np.concatenate(list(pieces)))
                return
            for piece in pieces:
                seq.on_frames(self._output(piece))
        except Exception as exc:
            self._finish(seq, exc)
            return
        self._finish(seq, None)

    def _output(self, frames: np.ndarray) -> np.ndarray:
        return (frames * 255).round().astype(np.uint8) if self.config.output == "uint8" else frames

    def _finish(self, seq: Sequence, outcome: np.ndarray | BaseException | None) -> None:
        """Resolve the request's future with its frames (None: streamed to `on_frames`) or its error."""
        self.scheduler.remove(seq)
        if seq.future.done():  # a long request whose other window failed in the same iteration
            return
        seq.status = Status.FINISHED
        if seq.started_at:
            seq.stats.seconds_running = time.perf_counter() - seq.started_at
        latents = None
        if not isinstance(outcome, BaseException) and seq.latents is not None:
            latents = seq.latents.detach().to("cpu", copy=True)  # kept by the worker for extend
        self.long_videos.release(seq)
        # Drop tensors now: a finished request must not pin memory while its caller reads the result.
        seq.latents = seq.scheduler = seq.cond = seq.uncond = seq.generator = seq.cache = seq.resume_from = None
        seq.extra.pop("text_kv", None)
        if isinstance(outcome, BaseException):
            seq.future.set_exception(outcome)
            return
        if outcome is not None and seq.on_frames is not None:
            seq.on_frames(self._output(outcome))  # an ordinary request with a stream: its frames in one piece
            outcome = None
        frames = None if outcome is None else self._output(outcome)
        seq.future.set_result(
            GenerationResult(request_id=seq.id, frames=frames, fps=seq.request.fps, stats=seq.stats, latents=latents)
        )

    # --- the loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self._intra_op_threads)
        while self.scheduler.wait_for_work():
            try:
                self.step()
                self.scheduler.wait_while_all_held(HOLD_POLL_SECONDS)
            except Exception as exc:  # fail what was in flight, keep serving new requests
                log.exception("engine step failed")
                for seq in self.scheduler.fail_running():
                    if not seq.future.done():
                        seq.future.set_exception(exc)
