"""Which frame counts and sizes each model family can make, without importing torch.

The API validates requests with these rules before a job is accepted; the engine checks them again.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.request import InvalidRequest

FAMILIES = ("wan", "cogvideox", "mochi", "hunyuanvideo", "ltx")


@dataclass(frozen=True)
class FamilyRules:
    """Frame counts of the form `frame_multiple * k + 1`; height and width multiples of `size_multiple`."""

    frame_multiple: int
    size_multiple: int
    embedded_guidance: bool = False

    def check_frames(self, num_frames: int) -> None:
        if num_frames < 1 or (num_frames - 1) % self.frame_multiple != 0:
            raise InvalidRequest(
                "num_frames",
                f"must be {self.frame_multiple}k+1 (e.g. 1, {self.frame_multiple + 1}, "
                f"{2 * self.frame_multiple + 1}) for this model family",
            )

    def check_size(self, field: str, value: int) -> None:
        if value < self.size_multiple or value % self.size_multiple != 0:
            raise InvalidRequest(field, f"must be a positive multiple of {self.size_multiple} for this model family")


# CogVideoX's VAE restores 4k+1 frames only from an odd latent count (5 frames come back as 8), so it
# takes 8k+1. Spatial multiples are VAE downscale x transformer patch size of the stock configs; a
# registry entry may override them for a checkpoint with other settings.
RULES: dict[str, FamilyRules] = {
    "wan": FamilyRules(frame_multiple=4, size_multiple=16),
    "cogvideox": FamilyRules(frame_multiple=8, size_multiple=16),
    "hunyuanvideo": FamilyRules(frame_multiple=4, size_multiple=16, embedded_guidance=True),
    "mochi": FamilyRules(frame_multiple=6, size_multiple=16),
    "ltx": FamilyRules(frame_multiple=8, size_multiple=32),
}


def rules_for(family: str) -> FamilyRules:
    try:
        return RULES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None
