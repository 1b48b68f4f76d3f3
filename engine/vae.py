"""The engine's VAE decoding: faster kernels (`fast_decode`) and streamed decodes (`*_pieces`).

Streamed decodes hand a video's frames over a few at a time as the VAE makes them, so memory stays flat in the
video's length beyond the latent itself. Each follows its VAE's own piecewise decode in diffusers, step for step:
Wan's causal cache one latent frame at a time (`wan_pieces`), CogVideoX's batches of two latent frames with their
convolution cache (`cogvideox_pieces`), Mochi two latent frames at a time (`mochi_pieces`), and LTX's and
HunyuanVideo's temporal tiles blended over their overlap (`temporal_tile_pieces`). Mochi's own framewise decoding
is not its whole decode: its causal convolutions pad time by repeating each batch's first frame and keep no
cache (tiny model: frames apart by 0.4), so `mochi_pieces` gives those convolutions the cache they lack (the
previous batch's last input frames instead of the repeats); its group norms are per frame, so its frames are the
whole decode's. Where the VAE tiles space as well (`enable_tiling` on a video larger
than a tile), the causal VAEs' streams decode at once instead: their spatial tiles each need a cache of their own.

Faster kernels, frames within 1e-5 of diffusers' own decode (float, [0, 1]).

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
from typing import Any

import torch
import torch.nn.functional as F
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
    """Within this block, on this thread, `vae`'s heavy batch-1 3-D convolutions run on oneDNN and Wan's RMS norms
    take a sum of squares over the channels."""
    _install(vae)
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def fast_pieces(vae: torch.nn.Module, pieces: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """A streamed decode's `pieces`, each computed inside `fast_decode(vae)`. The stream's consumer runs between
    pieces (an encoder, other requests' steps): the fast path is on only while a piece is being made."""
    while True:
        with fast_decode(vae):
            piece = next(pieces, None)
        if piece is None:
            return
        yield piece


def routed_convolutions() -> int:
    """How many convolutions this thread has sent to oneDNN so far (tests check the fast path ran)."""
    return getattr(_state, "routed", 0)


# --- streamed decodes: each yields the VAE's output, (B, C, f, H, W) in [-1, 1], a few frames at a time ------------


def _spatially_tiled(vae: Any, z: torch.Tensor, min_height: int, min_width: int) -> bool:
    """Whether the VAE's own decode would cut this latent into spatial tiles (`enable_tiling`)."""
    return bool(getattr(vae, "use_tiling", False)) and (z.shape[-1] > min_width or z.shape[-2] > min_height)


@torch.no_grad()
def wan_pieces(vae: Any, z: torch.Tensor) -> Iterator[torch.Tensor]:
    """`AutoencoderKLWan._decode`: one latent frame at a time through the causal feature cache (1 frame, then 4)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    ratio = vae.spatial_compression_ratio
    if _spatially_tiled(vae, z, vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio):
        yield vae.decode(z, return_dict=False)[0]
        return
    x = vae.post_quant_conv(z)
    vae.clear_cache()
    try:
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
            if vae.config.patch_size is not None:
                out = unpatchify(out, patch_size=vae.config.patch_size)
            yield torch.clamp(out, min=-1.0, max=1.0)
    finally:
        vae.clear_cache()


@torch.no_grad()
def cogvideox_pieces(vae: Any, z: torch.Tensor) -> Iterator[torch.Tensor]:
    """`AutoencoderKLCogVideoX._decode`: batches of `num_latent_frames_batch_size` latent frames (the first takes
    the odd one) through the decoder's convolution cache; 9 frames, then 8 at a time with the defaults."""
    if _spatially_tiled(vae, z, vae.tile_latent_min_height, vae.tile_latent_min_width):
        yield vae.decode(z, return_dict=False)[0]
        return
    frames, size = z.shape[2], vae.num_latent_frames_batch_size
    remaining, cache = frames % size, None
    for i in range(max(frames // size, 1)):
        start, end = size * i + (0 if i == 0 else remaining), size * (i + 1) + remaining
        piece = z[:, :, start:end]
        if vae.post_quant_conv is not None:
            piece = vae.post_quant_conv(piece)
        piece, cache = vae.decoder(piece, conv_cache=cache)
        yield piece


def _causal_cache_forward(module: torch.nn.Module, original: Callable) -> Callable:
    """A replicate-padded `CogVideoXCausalConv3d.forward` that, inside `mochi_pieces`, takes the previous batch's
    last `time_pad` input frames as its cache instead of repeating the batch's first frame (outside: unchanged)."""

    def forward(inputs: torch.Tensor, conv_cache: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        if not getattr(_state, "causal_cache", False):
            return original(inputs, conv_cache)
        w, _, h, _, t, _ = module.time_causal_padding
        if conv_cache is None:  # the video's first frames: repeated, as the whole decode pads them
            timed = F.pad(inputs, (0, 0, 0, 0, t, 0), mode="replicate") if t else inputs
        else:
            timed = torch.cat([conv_cache, inputs], dim=2)
        cache = timed[:, :, timed.shape[2] - t :].clone() if t else None
        # Replicate padding is separable: space after time equals the module's padding of all three at once.
        return module.conv(F.pad(timed, (w, w, h, h, 0, 0), mode="replicate")), cache

    return forward


def _install_causal_cache(vae: torch.nn.Module) -> None:
    if getattr(vae, "_vidserve_causal_cache", False):
        return
    for module in vae.decoder.modules():
        if getattr(module, "pad_mode", None) == "replicate" and hasattr(module, "time_causal_padding"):
            stride = module.conv.stride[0] if isinstance(module.conv.stride, tuple) else module.conv.stride
            if stride == 1:
                module.forward = _causal_cache_forward(module, module.forward)
    vae._vidserve_causal_cache = True


@torch.no_grad()
def mochi_pieces(vae: Any, z: torch.Tensor) -> Iterator[torch.Tensor]:
    """`AutoencoderKLMochi._decode` with framewise decoding, `num_latent_frames_batch_size` latent frames at a time,
    the first `temporal_compression_ratio - 1` frames dropped as diffusers does; its causal convolutions keep a
    cache across batches (`_causal_cache_forward`), so the frames are the whole decode's."""
    ratio = vae.spatial_compression_ratio
    if _spatially_tiled(vae, z, vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio):
        yield vae.decode(z, return_dict=False)[0]
        return
    _install_causal_cache(vae)
    drop = vae.temporal_compression_ratio - 1 if vae.drop_last_temporal_frames else 0
    cache = None
    for i in range(0, z.shape[2], vae.num_latent_frames_batch_size):
        _state.causal_cache = True
        try:
            piece, cache = vae.decoder(z[:, :, i : i + vae.num_latent_frames_batch_size], conv_cache=cache)
        finally:
            _state.causal_cache = False
        if i == 0:
            piece = piece[:, :, drop:]
        yield piece


@torch.no_grad()
def temporal_tile_pieces(vae: Any, z: torch.Tensor, temb: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """`_temporal_tiled_decode` of LTX's and HunyuanVideo's VAEs: overlapping temporal tiles, each blended into the
    one before over `tile_sample_min_num_frames - tile_sample_stride_num_frames` frames (`blend_t`, as diffusers
    does it in place), handed over `tile_sample_stride_num_frames` frames at a time. Spatial tiles inside a
    temporal tile are the VAE's own `tiled_decode`. `temb`: LTX's decode timestep (HunyuanVideo takes none).

    Diffusers drops one frame a tile from the second tile on: LTX its last, HunyuanVideo its first (and applies
    `post_quant_conv` per tile); both are followed here.
    """
    ltx = type(vae).__name__ == "AutoencoderKLLTXVideo"
    time, space = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    latent_tile, latent_stride = vae.tile_sample_min_num_frames // time, vae.tile_sample_stride_num_frames // time
    blend = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames
    min_height, min_width = vae.tile_sample_min_height // space, vae.tile_sample_min_width // space
    left = (z.shape[2] - 1) * time + 1  # pixel frames still to hand over
    previous = None
    for i in range(0, z.shape[2], latent_stride):
        tile = z[:, :, i : i + latent_tile + 1]
        if _spatially_tiled(vae, tile, min_height, min_width):
            decoded = vae.tiled_decode(tile, temb, return_dict=True).sample if ltx else vae.tiled_decode(tile).sample
        elif ltx:
            decoded = vae.decoder(tile, temb)
        else:
            decoded = vae.decoder(vae.post_quant_conv(tile))
        if previous is None:
            piece = decoded[:, :, : vae.tile_sample_stride_num_frames + 1]
        else:
            decoded = decoded[:, :, :-1] if ltx else decoded[:, :, 1:]
            decoded = vae.blend_t(previous, decoded, blend)
            piece = decoded[:, :, : vae.tile_sample_stride_num_frames]
        previous = decoded
        piece = piece[:, :, :left]
        left -= piece.shape[2]
        if piece.shape[2]:
            yield piece
        if left <= 0:
            return
