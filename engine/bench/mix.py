"""The fixed request mixes the benchmark serves, per family and model size.

Shapes, step counts, guidance and prompts vary the way a text-to-video service's traffic does: a few size
presets, two lengths, several step counts, guidance on and off, mostly distinct prompts, a shared negative.
"""

from __future__ import annotations

from engine import families
from engine.request import GenerationRequest

PROMPTS = [
    "a red fox running through a snowy forest",
    "a small robot walking down a city street at night",
    "waves crashing on a beach at sunset",
    "a horse running across a green field",
    "a bird flying over the ocean",
    "rain falling on a quiet street",
    "a dog swimming in a river",
    "a fast car on a mountain road",
    "clouds moving over the mountains",
    "a child dancing in the rain",
    "fire light in a dark house",
    "a cat walking on the beach",
]
NEGATIVE = "blurry, low quality"

GPU_SHAPES = {"wan": ((17, 33), ((256, 256), (320, 576)))}  # (frame counts, sizes) at Wan 1.3B's dimensions


def request_mix(family: str, n: int = 16, gpu: bool = False, steps: tuple[int, ...] = (4, 6, 8)) -> list:
    """`n` requests over 2 lengths x 2 sizes x `steps` x guidance on/off; prompts cycle, so a few repeat."""
    frames, sizes = GPU_SHAPES[family] if gpu else families.get(family).parts.bench_shapes
    requests = []
    for i in range(n):
        height, width = sizes[(i // 2) % len(sizes)]
        requests.append(
            GenerationRequest(
                id=f"{family}-{i:02d}",
                prompt=PROMPTS[i % len(PROMPTS)],
                negative_prompt=NEGATIVE if i % 3 else "",
                num_frames=frames[i % 2],
                height=height,
                width=width,
                num_inference_steps=steps[i % len(steps)],
                guidance_scale=1.0 if i % 4 == 3 else 5.0,
                seed=1000 + i,
            )
        )
    return requests


# The mixed-shape mix (issue 12): three or four lengths x four sizes per family (`FamilyParts.mixed_bench_shapes`),
# so that 16 requests hold at least 12 distinct (frames, height, width), as real traffic does.
MIXED_GPU_SHAPES = {"wan": ((9, 17, 25, 33), ((256, 256), (256, 384), (384, 256), (320, 320)))}
# Prompt tails of different lengths, so text lengths differ too (where the family does not pad them all alike).
PROMPT_TAILS = ["", ", cinematic lighting", ", slow camera pan, soft light, highly detailed, 4k, film grain"]


def mixed_request_mix(
    family: str, n: int = 16, gpu: bool = False, steps: tuple[int, ...] = (3, 4, 5, 6, 8)
) -> list[GenerationRequest]:
    """`n` requests of mostly distinct (frames, height, width), steps, guidance and prompt lengths.

    Lengths cycle fastest and sizes next, so the first len(frames) x len(sizes) requests are all distinct; steps
    and guidance cycle with periods of their own, so requests of one shape rarely share a pipeline call.
    """
    frames, sizes = MIXED_GPU_SHAPES[family] if gpu else families.get(family).parts.mixed_bench_shapes
    requests = []
    for i in range(n):
        height, width = sizes[(i // len(frames)) % len(sizes)]
        requests.append(
            GenerationRequest(
                id=f"{family}-mixed-{i:02d}",
                prompt=PROMPTS[i % len(PROMPTS)] + PROMPT_TAILS[i % len(PROMPT_TAILS)],
                negative_prompt=NEGATIVE if i % 3 else "",
                num_frames=frames[i % len(frames)],
                height=height,
                width=width,
                num_inference_steps=steps[i % len(steps)],
                guidance_scale=1.0 if i % 4 == 3 else 5.0,
                seed=2000 + i,
            )
        )
    return requests


def warmup_requests(mix: list[GenerationRequest]) -> list[GenerationRequest]:
    """One short request per distinct shape and guidance mode, with prompts outside the mix."""
    seen, out = set(), []
    for r in mix:
        key = (r.num_frames, r.height, r.width, r.guidance_scale > 1.0)
        if key not in seen:
            seen.add(key)
            out.append(
                GenerationRequest(
                    id=f"warmup-{len(out)}",
                    prompt=f"warm up {len(out)}",
                    negative_prompt="warm",
                    num_frames=r.num_frames,
                    height=r.height,
                    width=r.width,
                    num_inference_steps=2,
                    guidance_scale=r.guidance_scale,
                    seed=1,
                )
            )
    return out
