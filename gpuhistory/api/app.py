"""The Flask app factory (flask-openapi3: pydantic validation and the OpenAPI document).

The app only reads and writes the database — never NVML. Everything it needs comes in the
ServiceContext, so tests build it with their own database and clock.
"""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import Info, OpenAPI
from flask_openapi3.types import SecuritySchemesDict

from gpuhistory import __version__
from gpuhistory.api import (
    alerts,
    config_api,
    dashboard,
    events_api,
    fleet_api,
    health,
    incidents,
    memory,
    metrics,
    monitoring,
    processes,
    prometheus,
    status,
    system,
    throttle,
)
from gpuhistory.api.auth import install_auth
from gpuhistory.api.errors import register_error_handlers
from gpuhistory.api.validation import StrictJSONProvider, validation_error_response
from gpuhistory.context import ServiceContext

MAX_BODY_BYTES = 64 * 1024
BLUEPRINTS = (health, status, metrics, throttle, memory, monitoring, config_api, events_api,
              system, incidents, processes, prometheus, alerts, fleet_api)

SECURITY_SCHEMES: SecuritySchemesDict = {"bearer": {"type": "http", "scheme": "bearer",
                               "description": "GPUHISTORY_TOKEN, when one is configured"}}


def create_app(context: ServiceContext) -> OpenAPI:
    app = OpenAPI(
        "gpuhistory",
        info=Info(title="gpuhistory", version=__version__,
                  description="A GPU monitoring service that remembers."),
        security_schemes=SECURITY_SCHEMES,
        validation_error_status=422,
        validation_error_callback=validation_error_response,
        doc_ui=False,
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json = StrictJSONProvider(app)
    app.json.sort_keys = False
    app.extensions["gpuhistory"] = context
    register_error_handlers(app)
    install_auth(app)
    dashboard.install_security_headers(app)
    for module in BLUEPRINTS:
        app.register_api(module.bp)
    app.register_blueprint(dashboard.bp)  # the dashboard: static files, not in the OpenAPI doc

    @app.get("/api/openapi.json", doc_ui=False)
    def openapi_document():
        """The OpenAPI 3.1 document describing every endpoint, request and response."""
        return jsonify(app.api_doc)

    return app
