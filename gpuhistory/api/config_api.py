"""GET/PUT /api/gpu/config: the effective configuration and where each value came from.

A PUT is validated whole: an unknown key is 400, a bad value 422 naming each bad key, and
either way nothing changes. A good PUT is one ``config_changed`` event (old and new values)
that every process on the database picks up and that survives restarts.

Changes are compare-and-set: each is validated against the configuration it will produce,
in the transaction that stores it, so the stored configuration is always valid. ``GET`` and
``PUT`` answer with an ``ETag`` (the configuration's version); a ``PUT`` with ``If-Match``
is applied only to that version, else 412 ``precondition_failed`` and nothing changes.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field, ValidationError

from gpuhistory.api.common import View, ctx
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import ConfigDoc, errors
from gpuhistory.api.schemas import ConfigPatch
from gpuhistory.api.validation import field_errors
from gpuhistory.clock import iso_utc
from gpuhistory.config.store import ConfigStore, Snapshot, VersionMismatch
from gpuhistory.domain.config import Config

bp = APIBlueprint("config", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="config")])


def _store() -> ConfigStore | None:
    return ctx().config_store


def etag(version: int) -> str:
    """The ``ETag`` of configuration version ``version`` (a quoted string, RFC 9110)."""
    return f'"{version}"'


class ConfigHeaders(BaseModel):
    """The request header a PUT may carry (documented in the OpenAPI description)."""

    if_match: str | None = Field(
        None, alias="If-Match",
        description='apply only to this version: the ETag of a GET ("17"), or * for any')


def _if_match(header: str | None) -> set[str] | None:
    """The versions ``If-Match`` allows (``{"*"}`` for any), or None without the header."""
    if header is None:
        return None
    versions = set()
    for tag in (t.strip() for t in header.split(",")):
        if tag == "*":
            versions.add("*")
        elif len(tag) >= 2 and tag[0] == tag[-1] == '"':  # strong tags only (no W/)
            versions.add(tag[1:-1])
        else:
            raise ApiError(400, "invalid_argument",
                           'If-Match must be "*" or quoted ETags from GET /api/gpu/config',
                           {"If-Match": header[:64]})
    return versions


def _doc(snapshot: Snapshot | None, changes: dict | None = None) -> Response:
    doc: dict[str, Any]
    if snapshot is None:
        doc = {"config": ctx().config().model_dump(),
               "sources": dict.fromkeys(Config.model_fields, "default"), "updated_at": None}
    else:
        doc = {"config": snapshot.config.model_dump(), "sources": snapshot.sources,
               "updated_at": iso_utc(snapshot.updated_ms), "version": snapshot.version}
    if changes is not None:
        doc["changes"] = changes
    response = jsonify(doc)
    if snapshot is not None:
        response.headers["ETag"] = etag(snapshot.version)
    return response


@bp.get("/config", responses={200: ConfigDoc, **errors()})
def get_config() -> View:
    """Effective values; ``sources`` says default, file, env, flag or api for each key.

    The ``ETag`` header (and ``version``) name this configuration's version, for a PUT's
    ``If-Match``.
    """
    store = _store()
    return _doc(store.snapshot() if store else None)


@bp.put("/config", responses={200: ConfigDoc, **errors(400, 401, 403, 409, 412, 413, 422)},
        security=[{"bearer": []}])
def put_config(header: ConfigHeaders,
               body: ConfigPatch) -> View:
    """Change keys at runtime (``{"temp_throttle": 80}``); ``null`` removes a runtime change.

    Unknown keys or wrong types: 400; values out of range or thresholds not increasing in
    the configuration the change produces: 422 naming each bad key. Nothing changes unless
    every key is good. With ``If-Match: "<version>"`` (the ``ETag`` of a GET) the change
    applies only to that version: 412 ``precondition_failed`` when another change came
    first. The answer's ``ETag`` is the version the change produced.
    """
    store = _store()
    if store is None:
        raise ApiError(409, "config_read_only", "this process has a fixed configuration")
    if_version = _if_match(header.if_match)
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    if not changes:
        raise ApiError(400, "invalid_argument", "no configuration keys given",
                       {"known": sorted(Config.model_fields)})
    try:
        done = store.change(changes, if_version=if_version)
    except VersionMismatch as exc:
        error = ApiError(412, "precondition_failed",
                         "the configuration changed since that version: GET it again, "
                         "then retry with its ETag",
                         {"If-Match": exc.expected[:64], "etag": etag(exc.current)})
        raise error from None
    except ValidationError as exc:
        fields = field_errors(exc)
        message = "; ".join(f"{k}: {v}" for k, v in fields.items())
        raise ApiError(422, "validation_failed", f"invalid configuration: {message}",
                       {"fields": fields}) from None
    snapshot = store.snapshot()
    return _doc(Snapshot(done.config, snapshot.sources, done.version, snapshot.updated_ms),
                done.diff)
