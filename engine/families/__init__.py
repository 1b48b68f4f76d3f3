"""One adapter per model family; `adapter_class(family)` picks the one a registry entry names.

Adapters import diffusers (and so torch): this package is only imported by the engine itself.
"""

from __future__ import annotations

import importlib

from engine.families.base import FamilyAdapter

_ADAPTERS = {
    "wan": "engine.families.wan:WanAdapter",
    "cogvideox": "engine.families.cogvideox:CogVideoXAdapter",
    "mochi": "engine.families.mochi:MochiAdapter",
    "hunyuanvideo": "engine.families.hunyuanvideo:HunyuanVideoAdapter",
    "ltx": "engine.families.ltx:LTXAdapter",
}


def adapter_class(family: str) -> type[FamilyAdapter]:
    try:
        module, name = _ADAPTERS[family].split(":")
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(_ADAPTERS)}") from None
    return getattr(importlib.import_module(module), name)
