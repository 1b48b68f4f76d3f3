"""Train vidserve's demo text-to-video model on synthetic clips, on CPU, in about an hour on two cores.

Phases: (1) train the VAE on random clips; (2) encode a fixed set of clips to latents once and write their
per-channel mean/std into the VAE config; (3) train the transformer with rectified flow on those latents, keeping
an EMA copy; (4) save an ordinary `WanPipeline` directory and evaluate it (JSON + markdown report, sample grid).
Seeded and resumable: every phase checkpoints into the work directory and a rerun continues where it stopped.

    python -m engine.demo.train --out engine/weights/vidserve-shapes --report-dir docs/demo-model

`--long-recipe` continues a trained pipeline for long videos (`long_recipe`): its decoder on long clips, so it stays
true past the clip length it first learned, and its transformer on window-long clips whose shapes wrap around the
edges, some with clean context frames at timestep 0 (what a continuation chunk sees). Measured and not shipped
(docs/demo-model/README.md, "Long videos"):

    python -m engine.demo.train --out engine/weights/vidserve-shapes --report-dir docs/demo-model --long-recipe
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from engine.demo import clips
from engine.demo import components as C

log = logging.getLogger("engine.demo.train")

PHASE_VAE, PHASE_LATENTS, PHASE_DIT, PHASE_VAE_FULL, PHASE_VAE_LONG = 1, 2, 3, 4, 5
LATENT_NOISE = 0.05


@dataclass
class TrainConfig:
    seed: int = 0
    vae_compression: int = 4  # spatial and temporal factor, 2 or 4
    z_dim: int = 8
    patch: int = 2
    # Training sigma is logit-normal, then shifted like the sampler's schedule (1: unshifted).
    train_shift: float = 1.0
    sampler_shift: float = 2.0
    vae_steps: int = 1000
    vae_batch: int = 8
    # Short clips first: the first 5 frames (1 + one 4-frame chunk) teach the spatial code at about half the cost.
    vae_frames: int = 5
    vae_lr: float = 2e-3
    # Then full 9-frame clips: decoding a chunk after a chunk (not after the first frame) needs its own practice;
    # without it frames 5-8 drift green and lose their outline.
    vae_tune_steps: int = 300
    vae_tune_lr: float = 1e-3
    # The shape covers ~15% of a frame: weigh its pixels this much more, or the black background dominates the loss
    # and red and yellow (which differ only in green on those pixels) decode to one orange.
    vae_foreground_weight: float = 8.0
    latent_clips: int = 3000
    dit_steps: int = 3000
    dit_batch: int = 64
    dit_lr: float = 5e-4
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    checkpoint_every: int = 100
    eval_seeds: int = 2
    eval_steps: int = 20
    guidance_scale: float = 5.0
    # A pipeline directory to continue from (its VAE, transformer, text encoder and latent statistics); "" trains
    # from scratch.
    init_from: str = ""
    # The decoder alone on clips this long (0 steps: no such stage), its gradient on `vae_long_span` latent frames.
    vae_long_steps: int = 0
    vae_long_frames: int = 97
    vae_long_span: int = 5
    # Frames of the VAE's full-clip stage and of the transformer's clips (one latent set per length, used in turn).
    vae_tune_frames: int = clips.NUM_FRAMES
    clip_frames: tuple[int, ...] = (clips.NUM_FRAMES,)
    # Clip lengths (of `clip_frames`) whose shapes wrap around the frame's edges instead of staying inside it
    # (motion that can go on); the decoder's long stage always wraps.
    wrap: tuple[int, ...] = ()
    # Fraction of transformer samples whose first one or two latent frames are clean context at timestep 0.
    context_prob: float = 0.0


def long_recipe(cfg: TrainConfig, init_from: str) -> TrainConfig:
    """The continuation for long videos, from a trained pipeline: its encoder (so the latent space) as it is, the
    decoder 400 steps on 97-frame clips (`train_decoder_long`), then 1500 transformer steps on 9- and 17-frame (the
    window) clips, the 17-frame ones wrapping, 30% with context frames; the 9-frame clips stay inside the frame, as the
    shipped model's: trained on wrapping 9-frame clips too, its 9-frame videos lost 10 points of direction.

    Why the decoder: a causal decoder trained on 9-frame clips never decodes past its receptive field (about 48
    frames here) from the start, where every later frame lands: tuned on 21- or 45-frame clips, its frames past the
    32nd or 48th came back with 10x the error of the first ones and drifted in colour. Whole 161-frame clips cost 3.5
    s a step and did not learn in 200 steps; a warm-up without gradients reaches that state at a fraction of the cost
    (it halved the error past frame 48; docs/demo-model/README.md has what it did and did not change)."""
    return replace(cfg, init_from=init_from, vae_steps=0, vae_tune_steps=0, vae_batch=4, vae_tune_lr=5e-4,
                   vae_long_steps=400, vae_long_frames=97, vae_long_span=5, clip_frames=(9, 17), wrap=(17,),
                   context_prob=0.3, dit_steps=1500, dit_lr=3e-4)  # fmt: skip


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def step_rng(seed: int, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """Per-step random streams: a resumed run draws exactly the data and noise an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + phase * 100_003 + step)
    return np.random.default_rng([seed, phase, step]), gen


class TrainClock:
    """Wall time spent training, summed over interrupted and resumed processes (kept in `elapsed.json`)."""

    def __init__(self, work: Path) -> None:
        self.path = work / "elapsed.json"
        self.before = json.loads(self.path.read_text())["seconds"] if self.path.exists() else 0.0
        self.started = time.time()

    def seconds(self) -> float:
        return self.before + time.time() - self.started

    def save(self) -> None:
        self.path.write_text(json.dumps({"seconds": round(self.seconds(), 1)}))


_clock: TrainClock | None = None


def save_checkpoint(path: Path, state: dict) -> None:
    # Write-then-rename so a kill mid-save never leaves a truncated checkpoint behind.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if _clock is not None:
        _clock.save()


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=False, map_location="cpu") if path.exists() else None


def _progress(total: int, initial: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=5.0, file=sys.stderr)


def decode_unclamped(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstruction before `decode` clamps it to [-1, 1].

    The clamp zeroes the gradient of every pixel past the bound, and a black background sits exactly on it: a
    decoder that drifts below -1 gets no signal back and collapses to all-black. A hook collects the decoder's raw
    per-frame outputs instead.
    """
    chunks: list[torch.Tensor] = []
    handle = vae.decoder.register_forward_hook(lambda _module, _args, output: chunks.append(output))
    try:
        vae.decode(z)
    finally:
        handle.remove()
    return torch.cat(chunks, dim=2)


def vae_loss(
    vae: torch.nn.Module, video: torch.Tensor, gen: torch.Generator, foreground_weight: float = 0.0
) -> tuple[torch.Tensor, dict]:
    posterior = vae.encode(video).latent_dist
    # A small fixed noise instead of the posterior's own: the learned variance starts at 1 and drowns the code for
    # hundreds of steps. Drawn on the CPU so a run sees the same numbers on any device.
    z = posterior.mean + LATENT_NOISE * torch.randn(posterior.mean.shape, generator=gen).to(video.device)
    rec = decode_unclamped(vae, z)
    loss, parts = reconstruction_loss(rec, video, foreground_weight)
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return loss + 1e-4 * kl, parts


def reconstruction_loss(rec: torch.Tensor, video: torch.Tensor, foreground_weight: float) -> tuple[torch.Tensor, dict]:
    """MSE + L1 with the shape's pixels weighted, plus an edge term."""
    weight = 1.0 + foreground_weight * (video.amax(dim=1, keepdim=True) > -0.95).float()
    weight = weight / weight.mean()
    err = rec - video
    mse = (weight * err.square()).mean()
    l1 = (weight * err.abs()).mean()
    # Edges carry the shape: penalise differences in spatial gradients so outlines stay sharp.
    edge = F.l1_loss(rec.diff(dim=-1), video.diff(dim=-1)) + F.l1_loss(rec.diff(dim=-2), video.diff(dim=-2))
    loss = mse + l1 + 0.5 * edge
    return loss, {"mse": mse.item(), "edge": edge.item()}


@torch.no_grad()
def stitched_latents(vae: torch.nn.Module, video: torch.Tensor, piece: int = 10) -> torch.Tensor:
    """Latents of a long clip made of fresh encodes of `piece` latent frames each (plus the first frame), every
    piece inside the clip length the encoder was trained on: what the transformer's windows and chunks look like."""
    t = vae.config.scale_factor_temporal
    pieces, start = [], 0
    while start < video.shape[2] - 1 or not pieces:
        z = vae.encode(video[:, :, start : start + piece * t + 1]).latent_dist.mean
        pieces.append(z if not pieces else z[:, :, 1:])  # a fresh encode's first latent is one frame: drop it
        start += piece * t
    return torch.cat(pieces, dim=2)


def decode_span(vae: torch.nn.Module, z: torch.Tensor, warm: int, span: int) -> torch.Tensor:
    """The decoder's raw (unclamped) frames of latent frames `warm` .. `warm + span`, the ones before decoded
    without gradients: only their causal cache carries over, so the backward costs `span` latent frames whatever
    the clip's length. With `warm` 0 and `span` all, `decode_unclamped`'s frames."""
    x = vae.post_quant_conv(z)
    vae.clear_cache()
    outs = []
    try:
        for i in range(warm + span):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= warm):
                vae._conv_idx = [0]
                out = vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0)  # fmt: skip
            if i >= warm:
                outs.append(out)
    finally:
        vae.clear_cache()
    return torch.cat(outs, dim=2)


def first_frame(latent: int, temporal: int) -> int:
    """The first frame a latent frame decodes to (the first latent frame is one frame, every later one `temporal`)."""
    return 0 if latent == 0 else 1 + (latent - 1) * temporal


def decoder_steady_loss(
    vae: torch.nn.Module, video: torch.Tensor, warm: int, span: int, foreground_weight: float
) -> tuple[torch.Tensor, dict]:
    """The reconstruction loss of latent frames `warm` .. `warm + span` of a long clip (`decode_span`): the decoder
    learns the steady state that short clips never reach."""
    rec = decode_span(vae, stitched_latents(vae, video), warm, span)
    first = first_frame(warm, vae.config.scale_factor_temporal)
    return reconstruction_loss(rec, video[:, :, first : first + rec.shape[2]], foreground_weight)


def _optimise(loss: torch.Tensor, parts: dict, params: list, opt: torch.optim.Optimizer, sched: object,
              bar: tqdm) -> None:  # fmt: skip
    """One VAE optimiser step (gradients clipped to norm 1) and its progress-bar line."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    bar.update(1)
    bar.set_postfix(loss=f"{loss.item():.4f}", mse=f"{parts['mse']:.5f}")


def _resume_vae_stage(path: Path, vae: torch.nn.Module, opt: torch.optim.Optimizer, sched: object, name: str) -> int:
    """Load a VAE stage's checkpoint if there is one; the step it reached (0: none)."""
    if (state := load_checkpoint(path)) is None:
        return 0
    vae.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    log.info("vae %s: resumed at step %d", name, state["step"])
    return state["step"]


def _save_vae_stage(path: Path, vae: torch.nn.Module, opt: torch.optim.Optimizer, sched: object, done: int) -> None:
    save_checkpoint(
        path, {"model": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": done}
    )


def train_decoder_long(vae: torch.nn.Module, cfg: TrainConfig, work: Path, device: torch.device) -> None:
    """The decoder alone (the encoder, so the latent space, unchanged) on `vae_long_frames`-frame clips, each step's
    gradient on `vae_long_span` latent frames from a random point (`decoder_steady_loss`)."""
    steps = cfg.vae_long_steps
    if steps == 0:
        return
    ckpt_path = work / "vae_long.pt"
    vae.to(device)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.vae_tune_lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, 10))
    start = _resume_vae_stage(ckpt_path, vae, opt, sched, "decoder long")
    vae.train()
    latents = 1 + (cfg.vae_long_frames - 1) // vae.config.scale_factor_temporal
    every = min(cfg.checkpoint_every, max(1, steps // 4))
    bar = _progress(steps, start, "vae decoder long")
    t0 = time.time()
    for step in range(start, steps):
        rng, _ = step_rng(cfg.seed, PHASE_VAE_LONG, step)
        video, _ = clips.batch(rng, cfg.vae_batch, clips.all_combos(), cfg.vae_long_frames, True)
        warm = int(rng.integers(0, latents - cfg.vae_long_span + 1))
        loss, parts = decoder_steady_loss(vae, torch.from_numpy(video).to(device), warm, cfg.vae_long_span,
                                          cfg.vae_foreground_weight)  # fmt: skip
        _optimise(loss, parts, params, opt, sched, bar)
        done = step + 1
        if done % every == 0 or done == steps:
            _save_vae_stage(ckpt_path, vae, opt, sched, done)
            log.info("vae decoder long step %d/%d loss %.4f mse %.5f (warm %d) (%.0fs)", done, steps, loss.item(),
                     parts["mse"], warm, time.time() - t0)  # fmt: skip
    bar.close()
    vae.eval()


def train_vae(vae: torch.nn.Module, cfg: TrainConfig, work: Path, device: torch.device, stage: str = "short") -> None:
    """One VAE stage: "short" (5-frame clips, from scratch) or "full" (`vae_tune_frames`-frame clips, continuing)."""
    if stage == "short":
        ckpt_path, steps, frames, lr, warmup, phase = (
            work / "vae.pt",
            cfg.vae_steps,
            cfg.vae_frames,
            cfg.vae_lr,
            50,
            PHASE_VAE,
        )
    else:
        ckpt_path, steps, frames, lr, warmup = (
            work / "vae_full.pt",
            cfg.vae_tune_steps,
            cfg.vae_tune_frames,
            cfg.vae_tune_lr,
            10,
        )
        phase = PHASE_VAE_FULL
    every = min(cfg.checkpoint_every, max(1, steps // 4))
    vae.to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    start = _resume_vae_stage(ckpt_path, vae, opt, sched, stage)
    vae.train()
    bar = _progress(steps, start, f"vae {stage}")
    t0 = time.time()
    for step in range(start, steps):
        rng, gen = step_rng(cfg.seed, phase, step)
        # The first recipe drew 9-frame clips and cut them to the stage's length; drawing the same keeps it exact.
        wrap = frames in cfg.wrap
        drawn = frames if wrap else max(frames, clips.NUM_FRAMES)
        video, _ = clips.batch(rng, cfg.vae_batch, clips.all_combos(), drawn, wrap)
        video = np.ascontiguousarray(video[:, :, :frames])
        loss, parts = vae_loss(vae, torch.from_numpy(video).to(device), gen, cfg.vae_foreground_weight)
        _optimise(loss, parts, list(vae.parameters()), opt, sched, bar)
        done = step + 1
        if done % every == 0 or done == steps:
            _save_vae_stage(ckpt_path, vae, opt, sched, done)
            log.info("vae %s step %d/%d loss %.4f mse %.5f edge %.4f (%.0fs)", stage, done, steps, loss.item(),
                     parts["mse"], parts["edge"], time.time() - t0)  # fmt: skip
    bar.close()
    vae.eval()


@torch.no_grad()
def reconstruction_check(vae: torch.nn.Module, cfg: TrainConfig, device: torch.device, n: int = 96) -> dict:
    """How often the checker still reads colour, shape and direction after a VAE round trip: the ceiling for
    what the transformer can reach."""
    from engine.demo import checker

    rng, _ = step_rng(cfg.seed, PHASE_LATENTS, 1)
    video, specs = clips.batch(rng, n, clips.all_combos(), cfg.vae_tune_frames, cfg.vae_tune_frames in cfg.wrap)
    rec = vae.decode(vae.encode(torch.from_numpy(video).to(device)).latent_dist.mean).sample.cpu()
    frames = ((rec.permute(0, 2, 3, 4, 1).numpy() + 1.0) / 2.0).clip(0.0, 1.0)
    return checker.score(list(frames), [(s.colour, s.shape, s.direction) for s in specs])


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, cfg: TrainConfig, work: Path, device: torch.device, frames: int) -> dict:
    """Encode `latent_clips` training clips of `frames` frames once; the transformer then never runs the VAE."""
    path = work / ("latents.pt" if frames == clips.NUM_FRAMES else f"latents-{frames}.pt")
    if (state := load_checkpoint(path)) is not None:
        log.info("latents: loaded %d from %s", len(state["latents"]), path)
        return state
    rng, _ = step_rng(cfg.seed, PHASE_LATENTS, 0 if frames == clips.NUM_FRAMES else frames)
    combos = clips.training_combos()
    latents, prompts = [], []
    for _ in tqdm(range(0, cfg.latent_clips, 64), desc=f"encode {frames}", mininterval=5.0, file=sys.stderr):
        video, specs = clips.batch(rng, 64, combos, frames, frames in cfg.wrap)
        latents.append(vae.encode(torch.from_numpy(video).to(device)).latent_dist.mean.cpu())
        prompts.extend(s.prompt for s in specs)
    z = torch.cat(latents)[: cfg.latent_clips]
    state = {"latents": z, "prompts": prompts[: cfg.latent_clips],
             "mean": z.mean(dim=(0, 2, 3, 4)), "std": z.std(dim=(0, 2, 3, 4))}  # fmt: skip
    save_checkpoint(path, state)
    log.info("latents: %s, mean %s, std %s", tuple(z.shape), state["mean"].tolist(), state["std"].tolist())
    return state


def frame_timesteps(sigma: torch.Tensor, context: torch.Tensor, frames: int, tokens_per_frame: int) -> torch.Tensor:
    """Per-token timesteps (batch × tokens): each sample's own noise level, 0 on its first `context[i]` latent
    frames (clean context, as a continuation chunk's; Wan 2.2 TI2V conditions on its image the same way)."""
    noisy = torch.arange(frames)[None, :] >= context[:, None]
    per_frame = torch.where(noisy, sigma[:, None] * 1000.0, torch.zeros(()))
    return per_frame.repeat_interleave(tokens_per_frame, dim=1)


def train_transformer(
    transformer: torch.nn.Module,
    data: list[dict],
    text: dict[str, tuple[torch.Tensor, int]],
    cfg: TrainConfig,
    work: Path,
    device: torch.device,
    export_now: bool = False,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Rectified flow on normalised latents, one latent set per clip length in turn (normalised by `stats`, else
    the first set's mean and std); returns the EMA copy (as checkpointed, if `export_now`)."""
    ckpt_path = work / "transformer.pt"
    transformer.to(device)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.dit_lr, betas=(0.9, 0.99), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.dit_steps, 100))
    start = 0
    if (state := load_checkpoint(ckpt_path)) is not None:
        transformer.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        log.info("transformer: resumed at step %d", start)
    wrappers = C.install_padding_bias(transformer)
    mean, std = stats if stats is not None else (data[0]["mean"], data[0]["std"])
    mean, std = mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)
    sets = [((d["latents"] - mean) / std).to(device) for d in data]
    patch = transformer.config.patch_size
    embeds = {p: e.to(device) for p, (e, _) in text.items()}
    lengths = {p: n for p, (_, n) in text.items()}
    transformer.train()
    bar = _progress(cfg.dit_steps, start, "transformer")
    t0 = time.time()
    for step in range(start, start if export_now else cfg.dit_steps):
        rng, gen = step_rng(cfg.seed, PHASE_DIT, step)
        which = step % len(sets)
        idx = rng.integers(len(sets[which]), size=cfg.dit_batch)
        x0 = sets[which][torch.from_numpy(idx).to(device)]
        # Dropping the prompt teaches the unconditional prediction that classifier-free guidance needs.
        prompts = ["" if rng.random() < cfg.prompt_dropout else data[which]["prompts"][i] for i in idx]
        enc = torch.stack([embeds[p] for p in prompts])
        n = torch.tensor([lengths[p] for p in prompts])
        # Mostly the pipeline's 512 positions, sometimes shorter: robust to callers that pad less.
        eff = torch.where(
            torch.rand(cfg.dit_batch, generator=gen) < 0.5,
            torch.full((cfg.dit_batch,), 512.0),
            torch.exp(torch.empty(cfg.dit_batch).uniform_(math.log(16), math.log(512), generator=gen)),
        )
        bias = C.padding_bias(n, eff).to(device)
        for w in wrappers:
            w.bias = bias
        sigma = torch.sigmoid(torch.randn(cfg.dit_batch, generator=gen))  # logit-normal
        sigma = (cfg.train_shift * sigma / (1 + (cfg.train_shift - 1) * sigma)).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        if cfg.context_prob > 0:
            frames = x0.shape[2]
            with_context = torch.rand(cfg.dit_batch, generator=gen) < cfg.context_prob
            context = torch.where(with_context, torch.randint(1, 3, (cfg.dit_batch,), generator=gen), 0)
            context = context.clamp(max=frames - 1)
            noisy = (torch.arange(frames)[None, :] >= context[:, None]).to(device).view(-1, 1, frames, 1, 1)
            xt = torch.where(noisy, xt, x0)
            per_frame = x0.shape[3] * x0.shape[4] // (patch[1] * patch[2])
            t = frame_timesteps(sigma.cpu(), context, frames, per_frame).to(device)
            pred = transformer(xt, t, enc, return_dict=False)[0]
            weight = noisy.expand_as(x0).float()
            loss = ((pred - (noise - x0)).square() * weight).sum() / weight.sum()
        else:
            pred = transformer(xt, sigma * 1000.0, enc, return_dict=False)[0]
            loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), transformer.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.dit_steps:
            state = {"model": transformer.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "sched": sched.state_dict(), "step": done}  # fmt: skip
            save_checkpoint(ckpt_path, state)
            log.info("transformer step %d/%d loss %.4f (%.0fs)", done, cfg.dit_steps, loss.item(), time.time() - t0)
    bar.close()
    return ema.eval()


@torch.no_grad()
def prompt_table(pipe: object) -> dict[str, tuple[torch.Tensor, int]]:
    """Short (training-length) embeddings and token counts for every prompt the trainer uses."""
    prompts = [clips.prompt_for(*c) for c in clips.all_combos()] + [""]
    embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=C.TRAIN_TEXT_LEN)
    counts = pipe.tokenizer(prompts, padding="max_length", max_length=C.TRAIN_TEXT_LEN, truncation=True,
                            return_attention_mask=True).attention_mask  # fmt: skip
    return {p: (e, int(sum(m))) for p, e, m in zip(prompts, embeds, counts, strict=True)}


def run(out: Path, report_dir: Path, work: Path, cfg: TrainConfig, evaluate_fn: Callable[..., dict] | None = None,
        device: str = "cpu", export_now: bool = False) -> dict:  # fmt: skip
    """The whole recipe; returns the evaluation report (empty if `evaluate_fn` is None)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != json.loads(json.dumps(asdict(cfg))):
        raise SystemExit(f"{work} holds a run with a different configuration; pass another --work-dir")
    cfg_path.write_text(json.dumps(asdict(cfg), indent=2))
    global _clock
    _clock = clock = TrainClock(work)
    if cfg.init_from:
        from diffusers import WanPipeline

        start = WanPipeline.from_pretrained(cfg.init_from)
        tokenizer, text_encoder, vae, transformer = start.tokenizer, start.text_encoder, start.vae, start.transformer
    else:
        torch.manual_seed(cfg.seed)
        tokenizer = C.build_tokenizer()
        text_encoder = C.build_text_encoder(len(tokenizer), cfg.seed)
        torch.manual_seed(cfg.seed + 1)
        vae = C.build_vae(cfg.vae_compression, cfg.z_dim)
        torch.manual_seed(cfg.seed + 2)
        transformer = C.build_transformer(cfg.patch, cfg.z_dim)
    log.info(
        "parameters: vae %d, transformer %d, text encoder %d",
        sum(p.numel() for p in vae.parameters()),
        sum(p.numel() for p in transformer.parameters()),
        sum(p.numel() for p in text_encoder.parameters()),
    )

    dev = torch.device(device)
    train_vae(vae, cfg, work, dev, "short")
    train_vae(vae, cfg, work, dev, "full")
    train_decoder_long(vae, cfg, work, dev)
    vae.requires_grad_(False)
    data = [encode_latents(vae, cfg, work, dev, frames) for frames in cfg.clip_frames]
    vae_check = reconstruction_check(vae, cfg, dev)
    log.info("vae reconstructions read by the checker: %s", vae_check)
    vae.cpu()
    stats = None
    if cfg.init_from:
        # The transformer it continues learned on these statistics; keep them.
        stats = (torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std))
    else:
        vae.register_to_config(latents_mean=data[0]["mean"].tolist(), latents_std=data[0]["std"].tolist())

    pipe = C.assemble_pipeline(tokenizer, text_encoder, vae, transformer, cfg.sampler_shift)
    text = prompt_table(pipe)
    ema = train_transformer(transformer, data, text, cfg, work, dev, export_now, stats).cpu()

    pipe = C.assemble_pipeline(tokenizer, text_encoder, vae, ema, cfg.sampler_shift)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    clock.save()
    train_seconds = clock.seconds()
    log.info("saved pipeline to %s after %.1f min", out, train_seconds / 60)
    if evaluate_fn is None:
        return {}
    report = evaluate_fn(out, report_dir, seeds_per_combo=cfg.eval_seeds, steps=cfg.eval_steps,
                         guidance_scale=cfg.guidance_scale,
                         extra={"train_seconds": round(train_seconds, 1), "vae_reconstruction": vae_check,
                                "config": asdict(cfg)})  # fmt: skip
    log.info("done (training %.1f min): %s", train_seconds / 60, json.dumps(report["summary"]))
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="pipeline directory to write")
    p.add_argument("--report-dir", type=Path, help="evaluation report and sample grid (default: OUT-report)")
    p.add_argument("--work-dir", type=Path, help="checkpoints and log (default: var/train-demo-model/<OUT name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-compression", type=int, choices=(2, 4), default=TrainConfig.vae_compression)
    p.add_argument("--z-dim", type=int, default=TrainConfig.z_dim)
    p.add_argument("--patch", type=int, default=TrainConfig.patch)
    p.add_argument("--train-shift", type=float, default=TrainConfig.train_shift)
    p.add_argument("--sampler-shift", type=float, default=TrainConfig.sampler_shift)
    p.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    p.add_argument("--vae-full-steps", type=int, default=TrainConfig.vae_tune_steps, help="9-frame VAE steps")
    p.add_argument("--steps", type=int, default=TrainConfig.dit_steps, help="transformer steps")
    p.add_argument("--batch", type=int, default=TrainConfig.dit_batch, help="transformer batch size")
    p.add_argument("--vae-frames", type=int, default=TrainConfig.vae_frames, help="frames per VAE training clip")
    p.add_argument("--latent-clips", type=int, default=TrainConfig.latent_clips)
    p.add_argument("--eval-seeds", type=int, default=TrainConfig.eval_seeds, help="videos per prompt in evaluation")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="torch device to train on (the recipe is sized for cpu)")
    p.add_argument("--fresh", action="store_true", help="discard checkpoints in the work directory and start over")
    p.add_argument(
        "--export-now",
        action="store_true",
        help="write the pipeline from the last transformer checkpoint without training further",
    )
    p.add_argument("--no-eval", action="store_true", help="skip evaluation after training")
    p.add_argument(
        "--long-recipe",
        action="store_true",
        help="continue the pipeline at --out for long videos (wrapping motion, longer VAE clips, context frames)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vidserve train-demo-model` and `python -m engine.demo.train`; resumes by default."""
    args = parse_args(argv)
    out = args.out
    work = args.work_dir or Path("var/train-demo-model") / out.name
    report_dir = args.report_dir or out.with_name(out.name + "-report")
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(work / "train.log"), logging.StreamHandler()])  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        seed=args.seed,
        vae_compression=args.vae_compression,
        z_dim=args.z_dim,
        patch=args.patch,
        train_shift=args.train_shift,
        sampler_shift=args.sampler_shift,
        vae_steps=args.vae_steps,
        vae_frames=args.vae_frames,
        vae_tune_steps=args.vae_full_steps,
        latent_clips=args.latent_clips,
        dit_steps=args.steps,
        dit_batch=args.batch,
        eval_seeds=args.eval_seeds,
    )
    if args.long_recipe:
        cfg = long_recipe(cfg, str(out))
    log.info("training demo model into %s (work %s): %s", out, work, asdict(cfg))
    evaluate_fn = None
    if not args.no_eval:
        from engine.demo.evaluate import evaluate_directory

        evaluate_fn = evaluate_directory
    run(out, report_dir, work, cfg, evaluate_fn, args.device, args.export_now)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
