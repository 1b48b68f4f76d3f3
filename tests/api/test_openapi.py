"""GET /openapi.json: an OpenAPI 3.1 document that covers every route, method and answer of the app.

It drives schemathesis fuzzing later, so its schemas must match what the API accepts and returns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.validation import JOB_FIELDS

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return json.loads(response.get_data())


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_the_document_is_openapi_3_1_with_info_paths_and_components(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"] and document["info"]["version"]
    assert document["paths"] and document["components"]["schemas"]


def test_every_route_of_the_app_appears_with_its_methods(app: Flask, document: dict[str, Any]) -> None:
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    }

    assert routes == documented


def test_every_operation_has_an_id_responses_and_its_path_parameters(document: dict[str, Any]) -> None:
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["responses"], (path, method)
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status) and response["description"], (path, method, status)
    assert len(operation_ids) == len(set(operation_ids))


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    for ref in _refs(document):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref


def test_the_links_of_a_submitted_job_name_existing_operations(document: dict[str, Any]) -> None:
    operation_ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    links = document["paths"]["/v1/jobs"]["post"]["responses"]["202"]["links"]

    assert {link["operationId"] for link in links.values()} == {
        "getJob",
        "cancelJob",
        "getJobContent",
        "listJobWebhooks",
        "extendJob",
    }
    assert {link["operationId"] for link in links.values()} <= operation_ids


def test_every_error_answer_uses_the_error_schema(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    schema = response["content"]["application/json"]["schema"]
                    # The OpenAI-compatible surface answers OpenAI's own error shape, on purpose.
                    expected = "OpenAIError" if path.startswith("/v1/videos") else "Error"
                    assert schema == {"$ref": f"#/components/schemas/{expected}"}, (path, method, status)


def test_the_job_request_is_one_body_shape_per_model(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    variants = [schemas[ref["$ref"].rsplit("/", 1)[1]] for ref in schemas["JobRequest"]["oneOf"]]

    models = [v["properties"]["model"] for v in variants]
    # The default model (tiny-wan here) also admits null: its name is the first of its enum.
    assert [m.get("const") or m["enum"][0] for m in models] == ["tiny-wan", "tiny-ltx"]
    for variant in variants:
        assert set(variant["properties"]) == set(JOB_FIELDS)
        assert variant["additionalProperties"] is False
    # The default model's body may leave `model` out; every other model's must name it.
    assert [v["required"] for v in variants] == [["prompt"], ["model", "prompt"]]


def test_each_models_body_shape_states_its_own_limits(document: dict[str, Any]) -> None:
    ltx = document["components"]["schemas"]["JobRequest.tiny-ltx"]["properties"]
    wan = document["components"]["schemas"]["JobRequest.tiny-wan"]["properties"]

    assert ltx["num_frames"]["enum"] == [1, 9, 17, 25, 33, None]
    # tiny-wan makes long videos up to 161 frames; tiny-ltx (no long-video limit) stops at its window.
    assert wan["num_frames"]["enum"] == [*range(1, 162, 4), None]
    overlap = wan["long_video"]["anyOf"][0]["properties"]["overlap"]
    assert (overlap["minimum"], overlap["maximum"], overlap["multipleOf"]) == (4, 28, 4)
    assert wan["segments"]["items"]["properties"]["from_frame"]["maximum"] == 160
    assert (ltx["height"]["multipleOf"], ltx["height"]["minimum"], ltx["height"]["maximum"]) == (32, 32, 128)
    assert wan["width"]["multipleOf"] == 16
    assert wan["prompt"]["maxLength"] == 200
    assert wan["num_inference_steps"]["maximum"] == 50


def test_every_body_the_schema_allows_at_its_bounds_is_accepted(client: FlaskClient, document: dict[str, Any]) -> None:
    ltx = document["components"]["schemas"]["JobRequest.tiny-ltx"]["properties"]
    body = {
        "model": "tiny-ltx",
        "prompt": "x" * ltx["prompt"]["maxLength"],
        "num_frames": ltx["num_frames"]["enum"][-2],
        "height": ltx["height"]["maximum"],
        "width": ltx["width"]["minimum"],
        "num_inference_steps": ltx["num_inference_steps"]["maximum"],
        "guidance_scale": ltx["guidance_scale"]["maximum"],
        "seed": ltx["seed"]["maximum"],
        "fps": ltx["fps"]["maximum"],
        "webhook_url": "https://hooks.example.com:65535/v1/x?y=1#z",
        "metadata": {"a": [1, None, {"b": "c"}]},
    }

    assert client.post("/v1/jobs", json=body).status_code == 202


def test_a_long_body_at_the_schemas_bounds_is_accepted(client: FlaskClient, document: dict[str, Any]) -> None:
    wan = document["components"]["schemas"]["JobRequest.tiny-wan"]["properties"]
    long_video = wan["long_video"]["anyOf"][0]["properties"]
    body = {
        "model": "tiny-wan",
        "prompt": "a red square moving right",
        "num_frames": wan["num_frames"]["enum"][-2],
        "long_video": {
            "method": "continuation",
            "overlap": long_video["overlap"]["maximum"],
            "context_frames": long_video["context_frames"]["minimum"],
            "color_match": long_video["color_match"]["maximum"],
        },
        "segments": [
            {
                "prompt": "it turns",
                "from_frame": wan["segments"]["items"]["properties"]["from_frame"]["maximum"],
            }
        ],
    }

    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["params"]["long_video"] == body["long_video"]


def test_the_job_schema_names_exactly_the_fields_a_job_has(
    client: FlaskClient, submit, document: dict[str, Any]
) -> None:
    job = submit()
    schema = document["components"]["schemas"]["Job"]

    assert set(schema["properties"]) == set(job) == set(schema["required"])
    assert set(document["components"]["schemas"]["JobParams"]["properties"]) == set(job["params"])


def test_the_model_schema_names_exactly_the_fields_a_model_has(client: FlaskClient, document: dict[str, Any]) -> None:
    model = client.get("/v1/models").get_json()["data"][0]
    schema = document["components"]["schemas"]["Model"]

    assert set(schema["properties"]) == set(model)
    assert set(schema["properties"]["limits"]["properties"]) == set(model["limits"])
    assert set(schema["properties"]["defaults"]["properties"]) == set(model["defaults"])


def test_the_readiness_schema_names_every_checked_dependency(client: FlaskClient, document: dict[str, Any]) -> None:
    body = client.get("/readyz").get_json()
    schema = document["components"]["schemas"]["Readiness"]

    assert set(schema["properties"]) == set(body)
    assert set(schema["properties"]["failed"]["items"]["enum"]) == set(body["checks"])


def test_the_family_enum_and_a_models_rules_come_from_the_family_registry(
    document: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.openapi import build_openapi
    from engine.families import FAMILIES, Family, FamilyRules
    from engine.registry import ModelRegistry

    assert document["components"]["schemas"]["Model"]["properties"]["family"]["enum"] == list(FAMILIES)
    # A family registered in engine.families alone: the model registry accepts it, and the document lists it and
    # states its frame and size rules, with nothing changed in the API.
    monkeypatch.setitem(FAMILIES, "newfamily", Family("newfamily", FamilyRules(frame_multiple=3, size_multiple=8)))
    models = tmp_path / "models.toml"
    models.write_text('[models.new]\nfamily = "newfamily"\npath = "new"\nlimits = {max_frames = 10, max_height = 32}\n')
    built = build_openapi(ModelRegistry.from_file(models))
    assert built["components"]["schemas"]["Model"]["properties"]["family"]["enum"][-1] == "newfamily"
    body = built["components"]["schemas"]["JobRequest.new"]["properties"]
    assert body["num_frames"]["enum"] == [1, 4, 7, 10, None]
    assert (body["height"]["multipleOf"], body["height"]["minimum"], body["height"]["maximum"]) == (8, 8, 32)
