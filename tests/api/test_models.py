"""GET /v1/models: every registered model with its family, limits (frame rule, size multiple) and defaults.

The API reads the registry file only; it never loads a model.
"""

from __future__ import annotations


def test_models_lists_name_family_limits_and_defaults(client) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["data"]}

    assert set(models) == {"tiny-wan", "tiny-ltx"}
    ltx = models["tiny-ltx"]
    assert ltx["family"] == "ltx"
    assert ltx["limits"]["max_frames"] == 33
    assert ltx["limits"]["frame_rule"] == "8k+1"
    assert ltx["limits"]["size_multiple"] == 32
    assert ltx["defaults"] == {
        "num_frames": 9,
        "height": 32,
        "width": 32,
        "num_inference_steps": 4,
        "guidance_scale": 3.0,
        "fps": 8,
    }
