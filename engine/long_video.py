"""Videos longer than the model's native window, made from native-length pieces that batch like any request.

Windowed co-denoising (MultiDiffusion / FreeNoise): every step the request's full latent is cut into overlapping
native windows whose offsets move from step to step; each window is a row of the iteration's forwards (a
`WindowView`, with its own text where segments apply); the guided outputs are fused with triangular overlap
weights and the request's own scheduler steps once on the full latent. Initial noise beyond the first window is
shuffled copies of the first window's (FreeNoise).

Latent continuation: native chunks one after another, the request itself being the row; chunk k starts from the
clean tail latents of chunk k-1 (never decoded). Where the family's packed forward embeds a timestep per latent
frame (Wan, `FamilyAdapter.embeds_frame_timesteps`), the context frames are the clean latents at timestep 0, as
Wan 2.2 TI2V conditions on its image; the families with one timestep per row (CogVideoX, Mochi, HunyuanVideo,
LTX) get the context replaced before every forward by a forward-noised copy at the current noise level
(RePaint). The same mechanism continues a finished video (`GenerationRequest.context`, extend).

Latent frames run along one axis whose position depends on the family (`FrameAxis`); LTX's packed tokens are
frame-major, so a frame is a run of h*w tokens. State that a checkpoint must carry lives in `Sequence.extra`
under `STATE_EXTRA`; everything else derives from the request and the step index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from engine.families.base import FamilyAdapter
from engine.long_video_settings import prompt_at
from engine.registry import ModelSpec
from engine.request import CONTINUATION, WINDOWS, GenerationRequest, InvalidRequest
from engine.sequence import Sequence

# Sequence.extra entries a checkpoint saves for a continuation: the clean latents made so far (full length) and
# the first chunk's per-channel colour statistics.
STATE_EXTRA = ("long_output", "long_color")


@dataclass(eq=False)
class WindowView(Sequence):
    """One native window of a windowed request for one step: a row like any other request's.

    Its latents are a slice of the parent's, its timestep, scheduler and guidance the parent's; its text the
    segment prompt holding at the window's middle frame. The engine never advances a view: the fused outputs of
    all views advance the parent.
    """

    parent: Sequence | None = None
    start: int = 0  # first latent frame of the window in the parent's latent
    # A continuation chunk's timestep per latent frame (its clean context at 0), where the family embeds one.
    frame_timesteps: torch.Tensor | None = None

    @property
    def row_timestep(self) -> torch.Tensor:
        return self.timestep if self.frame_timesteps is None else self.frame_timesteps


@dataclass(frozen=True)
class FrameAxis:
    """Where the latent frames are: dimension `dim` after `framed` (LTX's packed tokens reshaped frame-major)."""

    dim: int
    tokens_per_frame: int | None = None  # packed layouts only

    def framed(self, latents: torch.Tensor) -> torch.Tensor:
        if self.tokens_per_frame is None:
            return latents
        b, n, c = latents.shape
        return latents.view(b, n // self.tokens_per_frame, self.tokens_per_frame, c)

    def packed(self, framed: torch.Tensor) -> torch.Tensor:
        if self.tokens_per_frame is None:
            return framed
        b, f, t, c = framed.shape
        return framed.reshape(b, f * t, c)

    def count(self, latents: torch.Tensor) -> int:
        return self.framed(latents).shape[self.dim]

    def take(self, latents: torch.Tensor, start: int, length: int) -> torch.Tensor:
        return self.packed(self.framed(latents).narrow(self.dim, start, length))

    def weights(self, length: int, framed: torch.Tensor) -> torch.Tensor:
        """Triangular window weights (1, 2, ..., 2, 1), shaped to broadcast along the framed tensor's frame axis."""
        ramp = torch.arange(length, dtype=torch.float32)
        w = torch.minimum(ramp + 1, length - ramp)
        shape = [1] * framed.dim()
        shape[self.dim] = length
        return w.view(shape).to(framed.device)


@dataclass
class _Plan:
    """A long request's geometry in latent frames: total, window, and the method's share between pieces."""

    method: str
    total: int  # latent frames denoised (a continuation of `context` counts the context's tail too)
    window: int
    share: int  # windows: overlap; continuation: context frames
    known: int = 0  # leading frames already clean (the continued video's tail)
    steps: int = 0  # denoising steps per window step or per chunk

    @property
    def stride(self) -> int:
        return self.window - self.share


@dataclass
class _Rows:
    """Per iteration: the window outputs collected for one parent, fused once all its views have run."""

    parent: Sequence
    expected: int
    fused: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    seen: int = 0
    single: torch.Tensor | None = None  # the only window's output, passed through unchanged (bit-exact)


class LongVideos:
    """The engine's long-video hooks: start, expand into rows, fuse, advance chunks, decode as a stream."""

    def __init__(self, adapter: FamilyAdapter, spec: ModelSpec) -> None:
        self.adapter = adapter
        self.spec = spec
        self.temporal = adapter.temporal_factor
        self._collecting: dict[int, _Rows] = {}

    # --- admission -----------------------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        """What only the loaded model can tell: the continued latents' shape; families whose frames do not slice."""
        if not request.is_long:
            return
        patch_t = getattr(self.adapter.transformer.config, "patch_size_t", None)
        if self.adapter.family == "cogvideox" and patch_t not in (None, 1):
            raise InvalidRequest("long_video", "is not supported by CogVideoX checkpoints that patch time in pairs")
        if self.adapter.family == "ltx" and self.adapter.pipe.transformer_temporal_patch_size != 1:
            raise InvalidRequest("long_video", "needs an LTX checkpoint with a temporal patch size of 1")
        if request.context is not None:
            expected = self.adapter.prepare_latents(replace(request, num_frames=1), torch.Generator().manual_seed(0))
            axis = self._axis(request)
            if not isinstance(request.context, torch.Tensor) or request.context.dim() != expected.dim():
                raise InvalidRequest("context", "must be the latents of a finished video of this model")
            frames = axis.framed(request.context)
            one = axis.framed(expected.to(request.context.dtype))
            same = [s for d, s in enumerate(frames.shape) if d != axis.dim] == [
                s for d, s in enumerate(one.shape) if d != axis.dim
            ]
            if not same:
                raise InvalidRequest("context", "must be latents of the same model, height and width")

    def is_long(self, seq: Sequence) -> bool:
        return "long_plan" in seq.extra

    # --- start ---------------------------------------------------------------------------------------

    def start(self, seq: Sequence) -> None:
        """After the engine prepared the request's latents and timesteps: lay out its windows or chunks."""
        request = seq.request
        if not request.is_long:
            return
        settings = request.long_video
        window = self._latent_frames(self.spec.window_frames)
        new = self._latent_frames(request.num_frames)
        seq.cache = None  # approximate step caching is per row; windows and chunks run exact
        seq.stats.cache_policy = "none"
        if settings.method == WINDOWS:
            plan = _Plan(WINDOWS, new, window, settings.overlap // self.temporal, steps=seq.num_steps)
            seq.extra["long_plan"] = plan
            if new > window:
                seq.latents = self._free_noise(seq, plan)
            return
        share = settings.context_frames // self.temporal
        known = 0
        if request.context is not None:
            context = self._axis(request).framed(request.context)
            known = min(share, context.shape[self._axis(request).dim])
        plan = _Plan(CONTINUATION, known + new, window, share, known=known, steps=seq.num_steps)
        seq.extra["long_plan"] = plan
        chunks = len(self._chunks(plan))
        axis = self._axis(request)
        # The clean latents made so far, full length; the continued video's tail first.
        full = torch.zeros_like(axis.framed(self._noise(seq, plan.total, torch.Generator().manual_seed(0))))
        if known:
            tail = axis.framed(request.context).narrow(axis.dim, -known, known)
            full.narrow(axis.dim, 0, known).copy_(tail.to(full.dtype))
        seq.extra["long_output"] = full
        seq.extra["long_color"] = None
        # One schedule per chunk, run back to back: the step index counts forwards over the whole video, so
        # progress, checkpoints and resume work unchanged.
        seq.timesteps = seq.timesteps.repeat(chunks)
        seq.extra["long_chunk_scheduler"] = self._fresh_scheduler_state(seq)
        self._begin_chunk(seq, 0)

    # --- each iteration ------------------------------------------------------------------------------

    def expand(self, running: list[Sequence], texts: Callable[[str], Any]) -> list[Sequence]:
        """Before planning: windowed requests become their window views; continuations get their context."""
        rows: list[Sequence] = []
        self._collecting.clear()
        for seq in running:
            plan = seq.extra.get("long_plan")
            if plan is None:
                rows.append(seq)
            else:
                views = (
                    self._views(seq, plan, texts) if plan.method == WINDOWS else [self._chunk_view(seq, plan, texts)]
                )
                self._collecting[id(seq)] = _Rows(parent=seq, expected=len(views))
                rows.extend(views)
        return rows

    def collect(self, view: WindowView, noise_pred: torch.Tensor, block_evaluations: int, batch_size: int) -> None:
        """After a forward: one window's guided output, weighted into its parent's full-length output.

        The parent's statistics count every window forward: its blocks and the size of the batch it rode in.
        """
        rows = self._collecting[id(view.parent)]
        rows.seen += 1
        view.parent.stats.block_evaluations += block_evaluations
        view.parent.stats.batch_sizes.append(batch_size)
        if rows.expected == 1:
            rows.single = noise_pred
            return
        axis = self._axis(view.parent.request)
        pred = axis.framed(noise_pred).float()
        weight = axis.weights(pred.shape[axis.dim], pred)
        if rows.fused is None:
            full = axis.framed(view.parent.latents)
            shape = list(full.shape)
            rows.fused = pred.new_zeros(shape)
            wshape = [1] * len(shape)
            wshape[axis.dim] = shape[axis.dim]
            rows.weight = pred.new_zeros(wshape)
        rows.fused.narrow(axis.dim, view.start, pred.shape[axis.dim]).add_(pred * weight)
        rows.weight.narrow(axis.dim, view.start, pred.shape[axis.dim]).add_(weight)

    def fused(self) -> Iterator[tuple[Sequence, torch.Tensor]]:
        """After all forwards: each windowed request whose every window ran, with its fused output."""
        for rows in self._collecting.values():
            if rows.seen != rows.expected or rows.parent.future.done():
                continue  # a failed forward finished the parent already
            if rows.single is not None:
                yield rows.parent, rows.single
                continue
            axis = self._axis(rows.parent.request)
            yield rows.parent, axis.packed(rows.fused / rows.weight)
        self._collecting.clear()

    def after_step(self, seq: Sequence) -> None:
        """After the request's scheduler stepped: a continuation chunk that finished is kept; the next begins."""
        plan = seq.extra.get("long_plan")
        if plan is None or plan.method != CONTINUATION or seq.step_index % plan.steps:
            return
        chunk = seq.step_index // plan.steps - 1
        self._keep_chunk(seq, plan, chunk)
        if seq.done:
            axis = self._axis(seq.request)
            full = seq.extra["long_output"]
            seq.latents = axis.packed(full.narrow(axis.dim, plan.known, plan.total - plan.known).contiguous())
        else:
            self._begin_chunk(seq, chunk + 1)

    def progress(self, seq: Sequence) -> tuple[int, int]:
        """Window forwards done and in all (continuation: chunk forwards, one per step of each chunk)."""
        plan = seq.extra.get("long_plan")
        if plan is None or plan.method == CONTINUATION:
            return seq.step_index, seq.num_steps
        counts = [len(self._starts(plan, step)) for step in range(seq.num_steps)]
        return sum(counts[: seq.step_index]), sum(counts)

    def seams(self, request: GenerationRequest) -> list[int]:
        """Pixel frames where a piece begins (windows: the first step's windows; continuation: each chunk's first
        new frame): where the seams of a long video would show. For measuring them (engine.demo.evaluate)."""
        if request.long_video is None:
            return []
        window = self._latent_frames(self.spec.window_frames)
        latent = self._latent_frames(request.num_frames)
        if request.long_video.method == WINDOWS:
            plan = _Plan(WINDOWS, latent, window, request.long_video.overlap // self.temporal)
            firsts = self._starts(plan, 0)[1:]
        else:
            plan = _Plan(CONTINUATION, latent, window, request.long_video.context_frames // self.temporal)
            firsts = [start + self._context_length(plan, k) for k, start in enumerate(self._chunks(plan))][1:]
        return [(j - 1) * self.temporal + 1 for j in firsts]

    def release(self, seq: Sequence) -> None:
        """A finished request drops its long-video tensors."""
        for name in (*STATE_EXTRA, "long_chunk_scheduler", "long_text_kv", "long_plan"):
            seq.extra.pop(name, None)

    # --- decoding ------------------------------------------------------------------------------------

    def decode(self, seq: Sequence, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """The request's frames in order, a few at a time, as the family's VAE decodes them piecewise
        (`FamilyAdapter.decode_stream`, engine.vae): memory does not grow with the length beyond the latent.

        A continuation of a finished video decodes after that video's tail, so its first frames follow on, and
        yields only the new frames (`num_frames` of them).
        """
        request = seq.request
        skip = 0
        if request.context is not None:
            axis = self._axis(request)
            plan = seq.extra.get("long_plan")
            known = plan.known if plan is not None else 0
            tail = axis.framed(request.context).narrow(axis.dim, -known, known).to(latents.device, latents.dtype)
            latents = axis.packed(torch.cat([tail, axis.framed(latents)], dim=axis.dim))
            frames = self._pixel_frames(known + self._latent_frames(request.num_frames))
            skip = frames - request.num_frames
            seq = replace(seq, request=replace(request, num_frames=frames))  # the shape being decoded
        long = self._latent_frames(seq.request.num_frames) > self._latent_frames(self.spec.window_frames)
        for piece in self.adapter.decode_stream(latents, seq, long):
            if skip >= len(piece):
                skip -= len(piece)
                continue
            yield piece[skip:]
            skip = 0

    # --- windows -------------------------------------------------------------------------------------

    def _starts(self, plan: _Plan, step: int) -> list[int]:
        """Window offsets at `step`: a grid of `stride` shifted by a step-dependent amount, clamped to the video."""
        if plan.total <= plan.window:
            return [0]
        stride = plan.stride
        # An increment coprime with the stride visits every shift before repeating, so seams keep moving.
        increment = max(1, round(stride * 0.618))
        while math.gcd(increment, stride) != 1:
            increment -= 1
        shift = (step * increment) % stride
        last = plan.total - plan.window
        starts, s = [], shift - stride if shift else 0
        while True:
            clamped = min(max(s, 0), last)
            if not starts or clamped != starts[-1]:
                starts.append(clamped)
            if clamped >= last:
                return starts
            s += stride

    def _views(self, seq: Sequence, plan: _Plan, texts: Callable[[str], Any]) -> list[WindowView]:
        length = min(plan.window, plan.total)
        axis = self._axis(seq.request)
        views = []
        for start in self._starts(plan, seq.step_index):
            latents = axis.take(seq.latents, start, length) if plan.total > length else seq.latents
            views.append(self._view(seq, start, latents, start + length // 2, texts))
        return views

    def _view(
        self, seq: Sequence, start: int, latents: torch.Tensor, middle: int, texts: Callable[[str], Any]
    ) -> WindowView:
        """A row of native shape over `latents`, with the prompt holding at latent frame `middle` of the video."""
        request = seq.request
        frames = self._pixel_frames(self._axis(request).count(latents))
        prompt = prompt_at(request.prompt, request.segments, self._pixel_at(request, middle))
        view = WindowView(
            request=replace(request, num_frames=frames, long_video=None, segments=(), context=None),
            future=seq.future,
            parent=seq,
            start=start,
            status=seq.status,
            generator=seq.generator,
            latents=latents,
            scheduler=seq.scheduler,
            timesteps=seq.timesteps,
            step_index=seq.step_index,
            cond=texts(prompt),
            uncond=seq.uncond,
            extra={k: v for k, v in seq.extra.items() if not k.startswith("long_")},
            stats=seq.stats,
        )
        # Text projections are per prompt, computed once per request (the runner's text K/V cache).
        view.extra["text_kv"] = seq.extra.setdefault("long_text_kv", {}).setdefault(prompt, {})
        return view

    def _free_noise(self, seq: Sequence, plan: _Plan) -> torch.Tensor:
        """FreeNoise: frames past the first window take shuffled copies of the first window's noise."""
        axis = self._axis(seq.request)
        latents = axis.framed(seq.latents).clone()
        first = latents.narrow(axis.dim, 0, plan.window)
        for start in range(plan.window, plan.total, plan.stride):
            n = min(plan.stride, plan.total - start)
            picks = torch.randperm(plan.window, generator=seq.generator)[:n].to(latents.device)
            latents.narrow(axis.dim, start, n).copy_(first.index_select(axis.dim, picks))
        return axis.packed(latents)

    # --- continuation --------------------------------------------------------------------------------

    def _chunks(self, plan: _Plan) -> list[int]:
        """Chunk offsets: the first at 0, each next `stride` on, the last ending at the video's end."""
        if plan.total <= plan.window:
            return [0]
        starts = [0]
        while starts[-1] + plan.window < plan.total:
            starts.append(min(starts[-1] + plan.stride, plan.total - plan.window))
        return starts

    def _context_length(self, plan: _Plan, chunk: int) -> int:
        """Leading frames of the chunk that are already clean: the previous chunk's tail (or the continued video)."""
        starts = self._chunks(plan)
        if chunk == 0:
            return plan.known
        return starts[chunk - 1] + min(plan.window, plan.total) - starts[chunk]

    def _begin_chunk(self, seq: Sequence, chunk: int) -> None:
        """Fresh noise and a fresh scheduler for the chunk; its context frames are filled in before each forward."""
        plan: _Plan = seq.extra["long_plan"]
        length = min(plan.window, plan.total)
        if chunk > 0 or plan.known:
            seq.latents = self._noise(seq, length)
        elif plan.total > plan.window:  # the first chunk: the head of the noise the engine drew
            seq.latents = self._axis(seq.request).take(seq.latents, 0, length).contiguous()
        if chunk > 0:
            self._reset_scheduler(seq)

    def _chunk_view(self, seq: Sequence, plan: _Plan, texts: Callable[[str], Any]) -> WindowView:
        """The current chunk as a row, its context frames first replaced by the clean context: at timestep 0 where
        the family embeds a timestep per frame, else noised to the current level (RePaint); its prompt the one
        holding at the middle of the chunk's new frames."""
        chunk = seq.step_index // plan.steps
        start = self._chunks(plan)[chunk]
        length = min(plan.window, plan.total)
        known = self._context_length(plan, chunk)
        frame_timesteps = None
        if known:
            axis = self._axis(seq.request)
            clean = seq.extra["long_output"].narrow(axis.dim, start, known)
            framed = axis.framed(seq.latents).clone()
            if self.adapter.embeds_frame_timesteps():
                framed.narrow(axis.dim, 0, known).copy_(clean.to(framed.dtype))
                frame_timesteps = seq.timestep.reshape(1).repeat(length)
                frame_timesteps[:known] = 0
            else:
                noise = torch.randn(clean.shape, generator=seq.generator, dtype=torch.float32).to(clean.device)
                framed.narrow(axis.dim, 0, known).copy_(self._noised(seq, clean, noise).to(framed.dtype))
            seq.latents = axis.packed(framed)
        view = self._view(seq, start, seq.latents, start + (known + length) // 2 - plan.known, texts)
        view.frame_timesteps = frame_timesteps
        return view

    def _noised(self, seq: Sequence, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        scheduler, timestep = seq.scheduler, seq.timestep.reshape(1)
        if hasattr(scheduler, "scale_noise"):  # flow matching: (1 - sigma) x0 + sigma noise
            return scheduler.scale_noise(clean.float(), timestep, noise)
        return scheduler.add_noise(clean.float(), noise, timestep.long())

    def _keep_chunk(self, seq: Sequence, plan: _Plan, chunk: int) -> None:
        """Write the finished chunk's new frames into the full latent (colour-matched to chunk one if asked)."""
        axis = self._axis(seq.request)
        start = self._chunks(plan)[chunk]
        known = self._context_length(plan, chunk)
        length = min(plan.window, plan.total)
        new = axis.framed(seq.latents).narrow(axis.dim, known, length - known).float()
        dims = [d for d in range(new.dim()) if d not in (0, self._channel_dim())]
        strength = seq.request.long_video.color_match
        if strength > 0:
            mean, std = new.mean(dim=dims, keepdim=True), new.std(dim=dims, keepdim=True).clamp_min(1e-6)
            if seq.extra.get("long_color") is None:
                seq.extra["long_color"] = torch.stack([mean, std])
            else:
                ref_mean, ref_std = seq.extra["long_color"]
                matched = (new - mean) / std * ref_std + ref_mean
                new = new + strength * (matched - new)
        full = seq.extra["long_output"]
        full.narrow(axis.dim, start + known, length - known).copy_(new.to(full.dtype))

    def _channel_dim(self) -> int:
        # Wan, Mochi, HunyuanVideo: (B, C, F, H, W); CogVideoX: (B, F, C, H, W); LTX framed: (B, F, tokens, C).
        return {"cogvideox": 2, "ltx": 3}.get(self.adapter.family, 1)

    def _fresh_scheduler_state(self, seq: Sequence) -> dict[str, Any]:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(seq.scheduler).items()}

    def _reset_scheduler(self, seq: Sequence) -> None:
        fresh = seq.extra["long_chunk_scheduler"]
        state = vars(seq.scheduler)
        state.clear()
        state.update({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in fresh.items()})
        if "old_pred_original_sample" in seq.extra:  # CogVideoX's DPM history starts afresh with the chunk
            seq.extra["old_pred_original_sample"] = None

    def _noise(self, seq: Sequence, latent_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The family's initial latents for `latent_frames` frames, from the request's generator unless given."""
        request = replace(
            seq.request, num_frames=self._pixel_frames(latent_frames), long_video=None, segments=(), context=None
        )
        return self.adapter.prepare_latents(request, generator or seq.generator)

    # --- geometry ------------------------------------------------------------------------------------

    def _pixel_at(self, request: GenerationRequest, latent_frame: int) -> int:
        """The first pixel frame latent frame `latent_frame` of the request's video decodes to."""
        return min(max(0, latent_frame * self.temporal), request.num_frames - 1)

    def _latent_frames(self, pixel_frames: int) -> int:
        return (pixel_frames - 1) // self.temporal + 1

    def _pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * self.temporal + 1

    def _axis(self, request: GenerationRequest) -> FrameAxis:
        family = self.adapter.family
        if family == "ltx":
            ratio = self.adapter.pipe.vae_spatial_compression_ratio
            patch = self.adapter.pipe.transformer_spatial_patch_size
            return FrameAxis(
                dim=1, tokens_per_frame=(request.height // ratio // patch) * (request.width // ratio // patch)
            )
        return FrameAxis(dim=1 if family == "cogvideox" else 2)
