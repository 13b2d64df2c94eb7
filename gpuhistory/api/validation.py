"""Turn pydantic's validation errors into the one error shape, with the right status.

400 for malformed input (not JSON, a missing or unknown field, a wrong type); 422 for
well-formed input whose values are not acceptable (out of range, thresholds not increasing).
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import ValidationError
from pydantic_core import ErrorDetails

MALFORMED = {"missing", "extra_forbidden", "json_invalid", "model_type", "dict_type",
             "model_attributes_type", "string_unicode"}


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing what RFC 8259 refuses and what would crash the parser.

    ``NaN``/``Infinity`` (Python's json accepts them) and a body nested deeper than the
    parser's recursion limit (a RecursionError, not a ValueError) become ValueError, which
    Flask and the body validation treat as malformed JSON: 400, never a 500.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_constant", _not_json)
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _is_malformed(error: ErrorDetails) -> bool:
    kind = error.get("type", "")
    return kind in MALFORMED or kind.endswith(("_type", "_parsing"))


def field_errors(exc: ValidationError) -> dict[str, str]:
    """{"field.path": "what is wrong"} for each error (values are not echoed back)."""
    out: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in error.get("loc", ())) or "body"
        out[loc] = error.get("msg", "invalid")
    return out


def validation_error_response(exc: ValidationError) -> Response:
    errors = exc.errors(include_url=False, include_input=False)
    malformed = any(_is_malformed(e) for e in errors)
    if request.method in ("POST", "PUT") and request.get_json(silent=True) is None:
        if request.get_data(cache=True):
            response = jsonify({"error": {"code": "malformed_json",
                                          "message": "the request body is not valid JSON",
                                          "details": {}}})
        else:
            response = jsonify({"error": {"code": "missing_body",
                                          "message": "a JSON object body is required",
                                          "details": {}}})
        response.status_code = 400
        return response
    response = jsonify({"error": {
        "code": "invalid_argument" if malformed else "validation_failed",
        "message": "invalid request: " + "; ".join(
            f"{k}: {v}" for k, v in field_errors(exc).items()),
        "details": {"fields": field_errors(exc)},
    }})
    response.status_code = 400 if malformed else 422
    return response
