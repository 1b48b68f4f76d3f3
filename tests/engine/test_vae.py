"""The engine's faster VAE decode (engine/vae.py) leaves frames within 1e-5 of diffusers' own decode."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.bench.mix import mixed_request_mix
from engine.families import adapter_class
from engine.vae import fast_decode, routed_convolutions

# Every family's adapter decodes with `fast_decode`; its VAE's compression (frames, pixels).
COMPRESSION = {"cogvideox": (4, 8), "hunyuanvideo": (4, 8), "ltx": (8, 32), "mochi": (6, 8), "wan": (4, 8)}
# The engine's exactness bar for frames in [0, 1], as for the packed forward (below one 8-bit level by 390x).
TOLERANCE = 1e-5


def _decode(family: str, vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1] as the adapter makes them; LTX's VAE takes the decode timestep when it is conditioned."""
    timestep = torch.tensor([0.05]) if family == "ltx" and vae.config.timestep_conditioning else None
    video = (
        vae.decode(z, timestep, return_dict=False)[0] if timestep is not None else vae.decode(z, return_dict=False)[0]
    )
    return (video / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("family", sorted(COMPRESSION))
@torch.no_grad()
def test_fast_decode_keeps_every_mixed_shapes_frames_within_1e_5_and_runs_the_faster_kernel(specs, family):
    vae = adapter_class(family).load(specs[family]).vae
    frames_per_latent, pixels_per_latent = COMPRESSION[family]
    shapes = sorted({(r.num_frames, r.height, r.width) for r in mixed_request_mix(family)})
    for i, (frames, height, width) in enumerate([shapes[0], shapes[len(shapes) // 2], shapes[-1]]):
        latent_shape = (
            1,
            vae.config.z_dim if family == "wan" else vae.config.latent_channels,
            (frames - 1) // frames_per_latent + 1,
            height // pixels_per_latent,
            width // pixels_per_latent,
        )
        z = torch.randn(latent_shape, generator=torch.Generator().manual_seed(i))
        reference = _decode(family, vae, z)
        routed = routed_convolutions()
        with fast_decode(vae):
            fast = _decode(family, vae, z)
        assert fast.shape == reference.shape
        assert float((fast - reference).abs().max()) <= TOLERANCE, (family, frames, height, width)
        if (frames, height, width) == shapes[-1]:
            assert routed_convolutions() > routed  # the largest shape's heavy convolutions took oneDNN


@torch.no_grad()
def test_outside_fast_decode_and_on_other_threads_the_vae_runs_diffusers_kernels_unchanged(specs):
    vae = adapter_class("mochi").load(specs["mochi"]).vae
    z = torch.randn((1, vae.config.latent_channels, 3, 6, 6), generator=torch.Generator().manual_seed(0))
    before = _decode("mochi", vae, z)  # nothing installed yet
    with fast_decode(vae):
        box = {}
        other = threading.Thread(
            target=lambda: box.update(frames=_decode("mochi", vae, z), routed=routed_convolutions())
        )
        other.start()
        other.join()
        routed = routed_convolutions()
        _decode("mochi", vae, z)
        assert routed_convolutions() > routed  # on this thread the same decode takes oneDNN
    assert torch.equal(box["frames"], before) and box["routed"] == 0
    assert torch.equal(_decode("mochi", vae, z), before)
