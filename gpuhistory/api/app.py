"""The Flask app factory. The app only reads and writes the database; never NVML."""

from __future__ import annotations

from flask import Flask

from gpuhistory.api.errors import register_error_handlers
from gpuhistory.api.health import bp as health_bp
from gpuhistory.api.status import bp as status_bp
from gpuhistory.context import ServiceContext

MAX_BODY_BYTES = 64 * 1024


def create_app(context: ServiceContext) -> Flask:
    app = Flask("gpuhistory")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["gpuhistory"] = context
    register_error_handlers(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(status_bp)
    return app
