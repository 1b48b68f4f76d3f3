"""Requests a model cannot serve are refused with a named error before any compute.

The pipelines would silently round such frame counts and sizes; the engine says which field is wrong.
"""

from __future__ import annotations

import pytest

from engine import Engine, InvalidRequest


@pytest.fixture(scope="module")
def idle_engines(specs):
    """Engines without a loop thread: nothing runs unless a test calls step()."""
    made = {}

    def get(family):
        if family not in made:
            made[family] = Engine(specs[family], background=False)
        return made[family]

    yield get
    for engine in made.values():
        engine.close()


INVALID = [
    ("wan", {"num_frames": 8}, "num_frames"),
    ("wan", {"num_frames": 37}, "num_frames"),  # over the registry's max_frames
    ("wan", {"width": 40}, "width"),
    ("wan", {"height": 0}, "height"),
    ("wan", {"num_inference_steps": 0}, "num_inference_steps"),
    ("wan", {"num_inference_steps": 51}, "num_inference_steps"),
    ("wan", {"guidance_scale": -1.0}, "guidance_scale"),
    ("wan", {"prompt": "  "}, "prompt"),
    ("cogvideox", {"num_frames": 5}, "num_frames"),  # 4k+1 with odd k decodes to 4k+4 frames
    ("mochi", {"num_frames": 9}, "num_frames"),
    ("mochi", {"num_inference_steps": 1}, "num_inference_steps"),  # its sigma schedule needs two
    ("hunyuanvideo", {"num_frames": 10}, "num_frames"),
    ("ltx", {"height": 48}, "height"),
    ("ltx", {"num_frames": 13}, "num_frames"),
]


@pytest.mark.parametrize(("family", "change", "field"), INVALID)
def test_an_invalid_request_is_refused_at_submit_naming_the_field(family, change, field, idle_engines, make_request):
    engine = idle_engines(family)
    with pytest.raises(InvalidRequest) as error:
        engine.submit(make_request(family, **change))
    assert error.value.field == field
    assert engine.num_unfinished == 0


def test_generate_refuses_the_whole_list_before_computing_any_of_it(idle_engines, make_request):
    engine = idle_engines("wan")
    with pytest.raises(InvalidRequest):
        engine.generate([make_request("wan", "ok"), make_request("wan", "bad", num_frames=6)])
    assert engine.num_unfinished == 0


def test_the_registry_resolves_defaults_and_validates_the_same_rules(specs):
    spec = specs["ltx"]
    request = spec.resolve("job-1", {"prompt": "a wave", "seed": 3})
    assert (request.num_frames, request.height, request.width) == (9, 32, 32)
    spec.check_request(request)
    with pytest.raises(InvalidRequest) as error:
        spec.resolve("job-2", {"prompt": "a wave", "width": 48})
    assert error.value.field == "width"


def test_the_registry_default_model_is_the_files_default_model_or_the_first(tmp_path):
    from engine.registry import ModelRegistry

    entries = '[models.a]\nfamily = "wan"\npath = "a"\n\n[models.b]\nfamily = "ltx"\npath = "b"\n'
    (tmp_path / "first.toml").write_text(entries)
    (tmp_path / "named.toml").write_text('default_model = "b"\n' + entries)
    (tmp_path / "unknown.toml").write_text('default_model = "c"\n' + entries)

    assert ModelRegistry.from_file(tmp_path / "first.toml").default == "a"
    assert ModelRegistry.from_file(tmp_path / "named.toml").default == "b"
    with pytest.raises(ValueError, match="default_model 'c'"):
        ModelRegistry.from_file(tmp_path / "unknown.toml")
    # `make run` serves the project's own trained model when a request names none.
    assert ModelRegistry.from_file().default == "vidserve-shapes"
