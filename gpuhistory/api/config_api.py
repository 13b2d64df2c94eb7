"""GET/PUT /api/gpu/config: the effective configuration and where each value came from.

A PUT is validated whole: an unknown key is 400, a bad value 422 naming each bad key, and
either way nothing changes. A good PUT is one ``config_changed`` event (old and new values)
that every process on the database picks up and that survives restarts.
"""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import ValidationError

from gpuhistory.api.common import View, ctx
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import ConfigDoc, errors
from gpuhistory.api.schemas import ConfigPatch
from gpuhistory.api.validation import field_errors
from gpuhistory.clock import iso_utc
from gpuhistory.config.store import ConfigStore
from gpuhistory.domain.config import Config

bp = APIBlueprint("config", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="config")])


def _store() -> ConfigStore | None:
    return ctx().config_store


def _doc(changes: dict | None = None) -> dict:
    store = _store()
    config = ctx().config()
    doc = {"config": config.model_dump(),
           "sources": store.sources() if store else dict.fromkeys(Config.model_fields, "default"),
           "updated_at": iso_utc(store.updated_ms) if store else None}
    if changes is not None:
        doc["changes"] = changes
    return doc


@bp.get("/config", responses={200: ConfigDoc, **errors()})
def get_config() -> View:
    """Effective values; ``sources`` says default, file, env, flag or api for each key."""
    return jsonify(_doc())


@bp.put("/config", responses={200: ConfigDoc, **errors(400, 401, 403, 409, 413, 422)},
        security=[{"bearer": []}])
def put_config(body: ConfigPatch) -> View:
    """Change keys at runtime (``{"temp_throttle": 80}``); ``null`` removes a runtime change.

    Unknown keys or wrong types: 400; values out of range or thresholds not increasing: 422
    naming each bad key. Nothing changes unless every key is good.
    """
    store = _store()
    if store is None:
        raise ApiError(409, "config_read_only", "this process has a fixed configuration")
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    if not changes:
        raise ApiError(400, "invalid_argument", "no configuration keys given",
                       {"known": sorted(Config.model_fields)})
    try:
        _, diff = store.update(changes)
    except ValidationError as exc:
        fields = field_errors(exc)
        message = "; ".join(f"{k}: {v}" for k, v in fields.items())
        raise ApiError(422, "validation_failed", f"invalid configuration: {message}",
                       {"fields": fields}) from None
    return jsonify(_doc(diff))
