"""Fixtures for the engine's specification tests: tiny models built once per session, engines per family.

Engines keep running across tests of a module (loading is cheap, but warm kernels make the suite fast).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pytest puts tests/ on sys.path, where tests/engine/ would pass for a namespace package called `engine`;
# with the repository root on the path too, the real package wins (a regular package beats a namespace).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if getattr(sys.modules.get("engine"), "__file__", "") is None:
    del sys.modules["engine"]

from engine.families import FAMILIES  # noqa: E402
from engine.registry import ModelRegistry, ModelSpec  # noqa: E402
from engine.request import GenerationRequest  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VIDSERVE_MODEL_DIR for the tests: tiny pipelines of every family (and a two-expert Wan 2.2) under tiny/."""
    import diffusers

    from engine.tiny import build_tiny_models

    diffusers.utils.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("models")
    build_tiny_models(root / "tiny", [*FAMILIES, "wan2.2"])
    return root


@pytest.fixture(scope="session")
def registry(model_dir: Path) -> ModelRegistry:
    return ModelRegistry.from_file(model_dir=str(model_dir))


@pytest.fixture(scope="session")
def specs(registry: ModelRegistry, model_dir: Path) -> dict[str, ModelSpec]:
    """Registry entries by family, plus variants: "wan2.2" (two experts), "cogvideox-dpm" (DPM scheduler,
    dynamic CFG) and "hunyuanvideo-true-cfg"."""
    out = {family: registry.get(f"tiny-{family}") for family in FAMILIES}
    out["wan2.2"] = replace(out["wan"], name="tiny-wan2.2", path=str(model_dir / "tiny" / "wan2.2"))
    out["cogvideox-dpm"] = replace(
        out["cogvideox"],
        name="tiny-cogvideox-dpm",
        path=str(_dpm_variant(model_dir)),
        options={"use_dynamic_cfg": True},
    )
    hunyuan = out["hunyuanvideo"]
    out["hunyuanvideo-true-cfg"] = replace(hunyuan, options={**hunyuan.options, "true_cfg_scale": 3.0})
    return out


def _dpm_variant(model_dir: Path) -> Path:
    """Tiny CogVideoX with CogVideoX 1.5's DPM scheduler instead of DDIM (same weights, a copy of the folder)."""
    import json
    import shutil

    target = model_dir / "tiny" / "cogvideox-dpm"
    if not target.exists():
        shutil.copytree(model_dir / "tiny" / "cogvideox", target)
        config_path = target / "scheduler" / "scheduler_config.json"
        config = json.loads(config_path.read_text())
        config["_class_name"] = "CogVideoXDPMScheduler"
        config_path.write_text(json.dumps(config))
        index_path = target / "model_index.json"
        index = json.loads(index_path.read_text())
        index["scheduler"] = ["diffusers", "CogVideoXDPMScheduler"]
        index_path.write_text(json.dumps(index))
    return target


@pytest.fixture(scope="session")
def engines(specs: dict[str, ModelSpec]) -> Iterator[dict[str, object]]:
    """One float-output engine per family, created on first use and closed at the end of the session."""
    from engine import Engine

    made: dict[str, Engine] = {}

    class Lazy(dict):
        def __missing__(self, family: str) -> Engine:
            made[family] = Engine(specs[family], output="float32")
            self[family] = made[family]
            return made[family]

    yield Lazy()
    for engine in made.values():
        engine.close()


def default_frames(family: str) -> int:
    return 7 if family == "mochi" else 9


@pytest.fixture(scope="session")
def make_request():
    """`make_request(family, id, **overrides)`: a valid small request for the family's tiny model."""
    return _make_request


def _make_request(family: str, request_id: str = "r", **overrides: object) -> GenerationRequest:
    fields = dict(
        id=request_id,
        prompt="a cat running on the beach",
        negative_prompt="",
        num_frames=default_frames(family),
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=5.0,
        seed=7,
    )
    fields.update(overrides)
    return GenerationRequest(**fields)


# A second frame count each joint-attention family's rules allow.
_OTHER_FRAMES = {"cogvideox": 17, "mochi": 13, "hunyuanvideo": 5}


@pytest.fixture(scope="session")
def mixed_requests():
    """`mixed_requests(name)`: three requests of other frames, sizes, prompt lengths, steps and guidance (with and
    without CFG rows; for LTX, frame rates) and a fourth that joins later, for a family or variant of `specs`."""
    return _mixed_requests


def _mixed_requests(name: str) -> list[GenerationRequest]:
    family = name.split("-")[0]  # "cogvideox-dpm" and "hunyuanvideo-true-cfg" are variants of their family
    if family == "ltx":
        return [
            _make_request("ltx", "a", prompt="a cat running on the beach at sunset", num_inference_steps=4, seed=1),
            _make_request("ltx", "b", num_frames=17, prompt="rain", guidance_scale=1.0, num_inference_steps=3, fps=24),
            _make_request("ltx", "c", width=64, negative_prompt="blurry", guidance_scale=3.0, num_inference_steps=5),
            _make_request("ltx", "late", prompt="snow", guidance_scale=2.0, num_inference_steps=4, seed=9, fps=12),
        ]
    if family == "wan":
        return [
            _make_request("wan", "a", prompt="a cat running on the beach at sunset", num_inference_steps=4, seed=1),
            _make_request(
                "wan", "b", num_frames=5, height=48, prompt="rain", guidance_scale=1.0, num_inference_steps=3
            ),
            _make_request("wan", "c", width=48, negative_prompt="blurry", guidance_scale=3.0, num_inference_steps=5),
            _make_request(
                "wan", "late", num_frames=1, prompt="snow", guidance_scale=2.0, num_inference_steps=4, seed=9
            ),
        ]
    # An empty negative prompt pools to NaN in HunyuanVideo's true CFG (diffusers too): say something.
    negative = {"negative_prompt": "low quality"} if family == "hunyuanvideo" else {}
    other = _OTHER_FRAMES[family]
    b = dict(num_frames=other, width=48, prompt="rain", guidance_scale=1.0, num_inference_steps=3, seed=2)  # no CFG
    return [
        _make_request(family, "a", prompt="a cat running on the beach at sunset", seed=1, **negative),
        _make_request(family, "b", **b, **negative),
        _make_request(family, "c", height=48, guidance_scale=3.0, num_inference_steps=5, seed=3, **negative),
        _make_request(family, "late", num_frames=other, prompt="snow", seed=9, **negative),
    ]
