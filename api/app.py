"""The Flask app factory of the public REST API (`/v1/jobs`, `/v1/models`, health, OpenAPI).

`create_app(settings)` wires settings, registry, job store, video store and Celery into one app; tests pass
their own settings, `api.wsgi` builds it from the environment for gunicorn.
"""

from __future__ import annotations

import logging

from flask import Flask

from api import auth, events, health, jobs, metrics, models, openai_videos, openapi, webhooks
from api.admin import views as admin
from api.errors import register_error_handlers
from api.rate_limit import init_rate_limits
from api.services import EXTENSION, Services
from vidserve.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__, static_folder=None)
    # Werkzeug answers 413 for larger bodies before a view reads them (checked against Content-Length too).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = Services.from_settings(settings)
    blueprints = (jobs.bp, webhooks.bp, events.bp, models.bp, health.bp, openapi.bp, metrics.bp, openai_videos.bp)
    for blueprint in (*blueprints, admin.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    auth.init_app(app)  # first: later hooks (rate limits) read g.principal
    init_rate_limits(app, settings)
    return app
