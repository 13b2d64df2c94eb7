"""GET /api/gpu/throttle/status: the speed multiplier to apply, with cooldowns, from the log."""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, config_at, ctx, one_gpu
from gpuhistory.api.responses import ThrottleStatus, errors
from gpuhistory.api.schemas import ThrottleQuery
from gpuhistory.clock import iso_utc
from gpuhistory.documents import throttle_doc

bp = APIBlueprint("throttle", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="throttle")])


@bp.get("/throttle/status", responses={200: ThrottleStatus, **errors(400, 404, 422)})
def throttle_status(query: ThrottleQuery) -> View:
    """Speed multiplier, effective state, reason and cooldown left; ``at`` a past time."""
    c = ctx()
    at: int | None = query.at
    when = at if at is not None else c.clock.now_ms()
    with c.engine.connect() as conn:
        entry = one_gpu(conn, query, at)
        doc = throttle_doc(conn, entry, when, config_at(when, live=at is None))
    return jsonify({"gpu_id": entry.gpu.index, "uuid": entry.gpu.uuid, "at": iso_utc(when),
                    **doc})
