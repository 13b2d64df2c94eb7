"""JSON answers encoded by orjson, for the routes whose documents are large.

A post-mortem or a history is megabytes of JSON; the standard encoder spent more time on
them than the database did. ``json_response`` writes what ``flask.jsonify`` writes (keys
in insertion order, compact separators, a final newline, ``application/json``), with two
differences a JSON parser cannot see: text is UTF-8 rather than ``\\u`` escapes, and
floats use the shortest exponent form (``1e16``, not ``1e+16``). Rows already written as
JSON text (gpuhistory/analytics/bulk.py) are embedded as ``orjson.Fragment`` without being
parsed again. A float that is not finite is written ``null`` (the standard encoder wrote
the non-JSON token ``NaN``; the log refuses such values on the way in, so none reaches an
answer). What orjson cannot encode (an integer beyond 64 bits) falls back to the app's
standard encoder.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from flask import Response, current_app
from werkzeug.http import http_date

_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS)


def _default(value: Any) -> Any:
    """What Flask's JSON provider does with values JSON has no type for."""
    if isinstance(value, date):
        return http_date(value)
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _plain(value: Any) -> Any:
    """``value`` with every Fragment parsed back into Python (for the standard encoder)."""
    if isinstance(value, orjson.Fragment):
        return orjson.loads(orjson.dumps(value))  # a Fragment encodes as its own text
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dumps(doc: Any) -> bytes:
    """``doc`` as compact JSON bytes, ending with a newline as ``jsonify`` does."""
    try:
        return orjson.dumps(doc, default=_default, option=_OPTIONS | orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits; a real TypeError re-raises
        text = current_app.json.dumps(_plain(doc), separators=(",", ":"))
        return (text + "\n").encode()


def json_response(doc: Any, status: int = 200) -> Response:
    """``doc`` as an ``application/json`` response (``jsonify`` for large documents)."""
    return current_app.response_class(dumps(doc), status=status, mimetype="application/json")
