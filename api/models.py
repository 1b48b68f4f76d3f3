"""`GET /v1/models`: the registered models with their family, limits and defaults.

Read from the registry file; the API never loads a model (and never imports torch).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import requires
from api.services import services

bp = Blueprint("models", __name__, url_prefix="/v1/models")


@bp.get("")
@requires("jobs:read")
def list_models() -> Response:
    registry = services().registry
    return jsonify(data=[spec.public_dict() | {"default": spec.name == registry.default} for spec in registry])
