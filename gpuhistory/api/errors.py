"""One JSON error shape for every error: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from gpuhistory.leases.model import LeaseError


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def error_response(status: int, code: str, message: str,
                   details: dict[str, Any] | None = None) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "details": details or {}}}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(LeaseError)
    def _lease_error(exc: LeaseError) -> tuple[Response, int]:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | tuple[Response, int]:
        if exc.response is not None:  # abort(response): already in the error shape
            return exc.response  # type: ignore[return-value]
        code = (exc.name or "error").lower().replace(" ", "_")
        message = {413: f"the request body is larger than {64 * 1024} bytes"}.get(
            exc.code or 0, exc.description or exc.name or "error")
        return error_response(exc.code or 500, code, message)

    @app.errorhandler(OperationalError)
    def _db_unavailable(exc: OperationalError) -> tuple[Response, int]:
        app.logger.warning("database unavailable: %s", exc.orig)
        return error_response(503, "database_unavailable",
                              "the database is unavailable; try again shortly",
                              {"reason": type(exc.orig).__name__})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
