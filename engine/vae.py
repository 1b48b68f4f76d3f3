"""Faster VAE decoding for the engine, frames within 1e-6 of diffusers' own decode.

What dominates, profiled per family on the tiny models (cProfile over the engine's decode of the benchmark's
mixed-shape mix, one thread): 3-D convolutions in every family (36% of Wan's decode, 41% of LTX's, 67-73% of
CogVideoX's, Mochi's and HunyuanVideo's), then in Wan's VAE the channel RMS norm (`F.normalize` over a strided
dimension, 19%; a contiguous sum of squares is 5-30x faster but moves Wan's frames by 1.6-2.4e-6). Each video
decodes alone (its shape is its own), with batch 1, and for batch-1 inputs below a size threshold torch picks its
naive vol2col kernel on the CPU: on a (1, 32, 14, 34, 34) input it took 469 ms where oneDNN's took 81 ms.
`fast_decode()` sends those heavy batch-1 3-D convolutions to oneDNN, the kernel torch itself picks for larger or
batched inputs.

The kernels sum in different orders, so frames move by float rounding: on the tiny models' mixed shapes,
Mochi 6.6e-7 and LTX 9.5e-7 (used by their adapters), but Wan 1.0e-6 at no gain, and CogVideoX (2.9-3.6e-6,
1.7-2.1x faster decode) and HunyuanVideo (1.8-2.3e-6, 1.5-1.7x) beyond this module's 1e-6, so those adapters
do not use it. The fast path applies only inside `fast_decode()` on the thread that entered it: a diffusers
pipeline sharing the VAE object (the benchmark's baseline, the exactness tests) runs diffusers' kernels as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

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


def _install(vae: torch.nn.Module) -> None:
    """Give the VAE's 3-D convolutions their gated fast path, once per VAE."""
    if getattr(vae, "_vidserve_fast_decode", False):
        return
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module._conv_forward = _conv3d_forward(module, module._conv_forward)
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
