"""One packed forward against per-request forwards: 16 Wan requests of 16 shapes, CFG rows included.

`python -m engine.bench.packed_forward`: a random-weight Wan transformer of 8.7M parameters (6 blocks, 6 heads x 48,
FFN 1152, as FACTS.md's measurements), float32 on CPU. Prints the time of the diffusers model called once per
request (its conditional and unconditional rows as a batch of two), once per row (as WanPipeline calls it), and
of one packed forward over every row (text K/V computed once per request, as the engine does, and in the forward),
with the largest difference of the packed outputs from the per-row calls.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from engine.families.base import TextEmbedding
from engine.families.wan import WanPackedForward
from engine.packing import PackedRow

TEXT_LENGTH = 512  # WanPipeline pads every prompt to this


def _model() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=6,
        attention_head_dim=48,
        in_channels=16,
        out_channels=16,
        text_dim=64,
        freq_dim=256,
        ffn_dim=1152,
        num_layers=6,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).eval()


def _text(length: int, generator: torch.Generator) -> TextEmbedding:
    embeds = torch.zeros(1, TEXT_LENGTH, 64)
    embeds[:, :length] = torch.randn(1, length, 64, generator=generator)
    return TextEmbedding(embeds=embeds, mask=(torch.arange(TEXT_LENGTH) < length).unsqueeze(0))


def _requests(n: int) -> list[tuple[PackedRow, PackedRow]]:
    """n requests of distinct latent shapes (5-17 frames, 32-64 px), each a conditional and a negative row."""
    generator = torch.Generator().manual_seed(1)
    shapes = [(f, h, w) for f in (2, 3, 4, 5) for h, w in ((4, 4), (4, 8), (8, 4), (6, 6))][:n]
    requests = []
    for i, (f, h, w) in enumerate(shapes):
        latents = torch.randn(16, f, h, w, generator=generator)
        timestep = torch.tensor(float(999 - 60 * i))
        cond = PackedRow(latents, timestep, _text(5 + (7 * i) % 40, generator))
        requests.append((cond, PackedRow(latents, timestep, _text(1, generator))))
    return requests


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    model = _model()
    packed = WanPackedForward(model)
    requests = _requests(args.requests)
    rows = [row for pair in requests for row in pair]
    cached = [PackedRow(r.latents, r.timestep, r.text, text_kv=packed.text_kv(r.text)) for r in rows]

    def diffusers_per_request() -> None:
        for cond, uncond in requests:
            model(
                hidden_states=torch.stack([cond.latents, uncond.latents]),
                timestep=torch.stack([cond.timestep, uncond.timestep]),
                encoder_hidden_states=torch.cat([cond.text.embeds, uncond.text.embeds]),
                return_dict=False,
            )

    def diffusers_per_row() -> list[torch.Tensor]:
        return [
            model(
                hidden_states=r.latents[None],
                timestep=r.timestep[None],
                encoder_hidden_states=r.text.embeds,
                return_dict=False,
            )[0]
            for r in rows
        ]

    def packed_forward(packed_rows: list[PackedRow]) -> list[torch.Tensor]:
        state = packed.embed(packed_rows)
        for index in range(packed.num_blocks):
            state = packed.block(index, state)
        return packed.head(state)

    pairs = zip(packed_forward(cached), diffusers_per_row(), strict=True)
    difference = max((a - b).abs().max().item() for a, b in pairs)
    video_tokens = packed.embed(cached).tokens.total
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"Wan {params:.1f}M params, {len(requests)} requests, {len(rows)} rows, {video_tokens} video tokens")
    per_request = _timed(diffusers_per_request, args.repeats)
    per_row = _timed(diffusers_per_row, args.repeats)
    one_cached = _timed(lambda: packed_forward(cached), args.repeats)
    one_plain = _timed(lambda: packed_forward(rows), args.repeats)
    print(f"diffusers, one call per request (B=2): {per_request * 1e3:8.1f} ms")
    print(f"diffusers, one call per row (B=1):     {per_row * 1e3:8.1f} ms")
    print(f"one packed forward, text K/V reused:   {one_cached * 1e3:8.1f} ms  ({per_request / one_cached:.2f}x)")
    print(f"one packed forward, text K/V computed: {one_plain * 1e3:8.1f} ms  ({per_request / one_plain:.2f}x)")
    print(f"max |packed - per row| = {difference:.1e}; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
