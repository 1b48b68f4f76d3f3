"""The model families: the one registry that the engine, layer split, tiny builder, reference pipeline, benchmark,
API validation and OpenAPI document read.

A family lives in one module, `engine/families/<name>.py`, which ends with `FAMILY = FamilyParts(...)` (adapter,
packed forward, layer-split layout, tiny-model builder, reference-pipeline arguments, benchmark shapes). Only its
name and frame/size rules are declared here, so that the API reads them without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.request import InvalidRequest

if TYPE_CHECKING:
    from engine.families.base import FamilyAdapter, FamilyParts


@dataclass(frozen=True)
class FamilyRules:
    """Frame counts of the form `frame_multiple * k + 1`; height and width multiples of `size_multiple`."""

    frame_multiple: int
    size_multiple: int

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


@dataclass(frozen=True)
class Family:
    """One registry entry: the family's name and rules; everything else is in `engine.families.<name>`."""

    name: str
    rules: FamilyRules

    @property
    def parts(self) -> FamilyParts:
        """The family module's `FAMILY` (imports torch and diffusers)."""
        return importlib.import_module(f"engine.families.{self.name}").FAMILY

    @property
    def adapter(self) -> type[FamilyAdapter]:
        return self.parts.adapter


# CogVideoX's VAE restores 4k+1 frames only from an odd latent count (5 frames come back as 8), so it takes 8k+1.
# Spatial multiples are VAE downscale x transformer patch size of the stock configs; a registry entry may override
# them for a checkpoint with other settings.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("wan", FamilyRules(frame_multiple=4, size_multiple=16)),
        Family("cogvideox", FamilyRules(frame_multiple=8, size_multiple=16)),
        Family("mochi", FamilyRules(frame_multiple=6, size_multiple=16)),
        Family("hunyuanvideo", FamilyRules(frame_multiple=4, size_multiple=16)),
        Family("ltx", FamilyRules(frame_multiple=8, size_multiple=32)),
    )
}


def get(name: str) -> Family:
    """The registry entry of `name`; ValueError naming the known families for any other."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def adapter_class(name: str) -> type[FamilyAdapter]:
    """The adapter class of the family a registry entry names."""
    return get(name).adapter
