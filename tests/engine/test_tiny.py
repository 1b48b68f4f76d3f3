"""Tiny models are built offline, once, and load through the same path as a real checkpoint."""

from __future__ import annotations

import pytest

from engine.families import FAMILIES
from engine.tiny import build_tiny_models


def test_every_family_has_a_complete_pipeline_directory(model_dir):
    for family in FAMILIES:
        assert (model_dir / "tiny" / family / "model_index.json").is_file()
        assert (model_dir / "tiny" / family / "transformer" / "config.json").is_file()


def test_building_again_keeps_complete_directories_untouched(model_dir):
    index = model_dir / "tiny" / "wan" / "model_index.json"
    before = index.stat().st_mtime_ns
    assert build_tiny_models(model_dir / "tiny", ["wan"]) == {"wan": model_dir / "tiny" / "wan"}
    assert index.stat().st_mtime_ns == before


def test_an_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model family"):
        build_tiny_models(tmp_path, ["sora"])
