"""One JSON error shape for every error: {"error": {"code", "message", "details"}}.

The database refusing a request (locked by another writer past the busy timeout, disk full,
file read-only, I/O error, server down, no pooled connection free) is ``503
database_unavailable`` with ``details.reason`` and a ``Retry-After`` header; the
transaction was rolled back, so nothing of the request was applied. Reads keep working
while only writes are refused.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from gpuhistory.leases.model import LeaseError
from gpuhistory.storage.engine import unavailable_reason

RETRY_AFTER_SECONDS = 1


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
            return exc.response  # type: ignore[return-value]  # werkzeug types the sans-IO base
        code = (exc.name or "error").lower().replace(" ", "_")
        message = {413: f"the request body is larger than {64 * 1024} bytes"}.get(
            exc.code or 0, exc.description or exc.name or "error")
        return error_response(exc.code or 500, code, message)

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeoutError)
    def _db_unavailable(exc: OperationalError | PoolTimeoutError) -> tuple[Response, int]:
        reason = unavailable_reason(exc)
        app.logger.warning("database unavailable (%s): %s", reason,
                           getattr(exc, "orig", None) or exc)
        response, status = error_response(
            503, "database_unavailable",
            "the database cannot take this request now; nothing was changed, try again",
            {"reason": reason})
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
