"""Faster VAE decoding for the engine, frames within 1e-5 of diffusers' own decode (float, [0, 1]).

What dominates, profiled per family on the tiny models (cProfile over the engine's decode of the benchmark's
mixed-shape mix, one thread): 3-D convolutions in every family (36% of Wan's decode, 41% of LTX's, 67-73% of
CogVideoX's, Mochi's and HunyuanVideo's), then in Wan's VAE the channel RMS norm. Each video decodes alone (its
shape is its own), with batch 1, and for batch-1 inputs below a size threshold torch picks its naive vol2col kernel
on the CPU: on a (1, 32, 14, 34, 34) input it took 469 ms where oneDNN's took 81 ms. `fast_decode()` sends those
heavy batch-1 3-D convolutions to oneDNN, the kernel torch itself picks for larger or batched inputs. Wan's
`WanRMS_norm` (`F.normalize` over the strided channel dimension, 44% of its decode once the convolutions are fast)
becomes a sum of squares over that dimension: the same arithmetic in another order. Decode time of four tiny
latent shapes up to 9 x 16 x 16, one thread: Wan 2.7 s -> 0.57 s, CogVideoX 3.3 s -> 0.77 s, HunyuanVideo
4.1 s -> 0.58 s.

The kernels sum in different orders, so frames move by float rounding, always within the engine's exactness bar
(1e-5 in [0, 1], 390 times below one level of an 8-bit frame): on the tiny models' mixed shapes at most Mochi
4.8e-7, LTX 7.2e-7, Wan 1.2e-6, HunyuanVideo 1.5e-6, CogVideoX 2.3e-6 (tests/engine/test_vae.py, standard-normal
latents). Every family's adapter decodes inside `fast_decode()`, which applies only on the thread that entered it:
a diffusers pipeline sharing the VAE object (the benchmark's baseline, the exactness tests) runs diffusers' kernels
as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

# Below this many multiply-adds torch's own batch-1 kernel is as fast as oneDNN's (measured on one thread).
ONEDNN_MIN_MACS = 2_000_000

_state = threading.local()


def _active() -> bool:
    return getattr(_state, "depth", 0) > 0


def conv3d_macs(x: torch.Tensor, weight: torch.Tensor, module: torch.nn.Conv3d) -> int:
    """Multiply-adds of one 3-D convolution of `x` (N, C, D, H, W) by the module's weight."""
    positions = x.shape[0]
    for size, k, pad, stride, dilation in zip(
        x.shape[2:], weight.shape[2:], module.padding, module.stride, module.dilation, strict=True
    ):
        positions *= (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    return positions * weight.shape[0] * weight[0].numel()


def _conv3d_forward(module: torch.nn.Conv3d, original: Callable) -> Callable:
    """`Conv3d._conv_forward` that takes oneDNN for heavy batch-1 float32 CPU inputs inside `fast_decode()`."""

    def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            not _active()
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or module.padding_mode != "zeros"
            or x.shape[0] != 1  # batched inputs take oneDNN already
            or conv3d_macs(x, weight, module) < ONEDNN_MIN_MACS
        ):
            return original(x, weight, bias)
        _state.routed = getattr(_state, "routed", 0) + 1
        return torch.mkldnn_convolution(
            x.contiguous(), weight, bias, module.padding, module.stride, module.dilation, module.groups
        )

    return conv_forward


def _rms_norm_forward(module: WanRMS_norm, original: Callable) -> Callable:
    """`WanRMS_norm.forward` that, inside `fast_decode()` on float32 channel-first inputs, divides by the root of a
    sum of squares over the channels instead of `F.normalize`'s strided vector norm (same eps, same scale)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _active() or x.dtype != torch.float32 or not module.channel_first:
            return original(x)
        norm = x.square().sum(dim=1, keepdim=True).sqrt_().clamp_min_(1e-12)  # F.normalize's eps
        return x / norm * module.scale * module.gamma + module.bias

    return forward


def _install(vae: torch.nn.Module) -> None:
    """Give the VAE's 3-D convolutions (and Wan's RMS norms) their gated fast path, once per VAE."""
    if getattr(vae, "_vidserve_fast_decode", False):
        return
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module._conv_forward = _conv3d_forward(module, module._conv_forward)
        elif isinstance(module, WanRMS_norm):
            module.forward = _rms_norm_forward(module, module.forward)
    vae._vidserve_fast_decode = True


@contextlib.contextmanager
def fast_decode(vae: torch.nn.Module) -> Iterator[None]:
    """Within this block, on this thread, `vae`'s heavy batch-1 3-D convolutions run on oneDNN."""
    _install(vae)
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def routed_convolutions() -> int:
    """How many convolutions this thread has sent to oneDNN so far (tests check the fast path ran)."""
    return getattr(_state, "routed", 0)
