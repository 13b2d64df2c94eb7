"""POST /api/gpu/monitoring/start and /stop: persisted, so a restart honours the last request."""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, ctx
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import Monitoring, errors
from gpuhistory.clock import iso_utc
from gpuhistory.sampling.sampler import Sampler

bp = APIBlueprint("monitoring", __name__, url_prefix="/api/gpu/monitoring",
                  abp_tags=[Tag(name="monitoring")])


def _sampler() -> Sampler:
    sampler = ctx().sampler
    if sampler is None:
        raise ApiError(409, "no_sampler", "this process serves the API only; start or stop "
                       "monitoring on the sampler process")
    return sampler


def _doc(sampler: Sampler) -> dict[str, object]:
    c = ctx()
    return {"monitoring": sampler.running, "interval_seconds": sampler.interval,
            "backend": sampler.backend.name, "requested_at": iso_utc(c.clock.now_ms())}


@bp.post("/start", responses={200: Monitoring, **errors(400, 401, 403, 409, 413, 422)},
         security=[{"bearer": []}])
def start() -> View:
    """Start sampling (idempotent); logged as ``monitoring_started`` with requested_by api."""
    sampler = _sampler()
    sampler.start(requested_by="api")
    return jsonify(_doc(sampler))


@bp.post("/stop", responses={200: Monitoring, **errors(400, 401, 403, 409, 413, 422)},
         security=[{"bearer": []}])
def stop() -> View:
    """Stop sampling after the tick in flight (idempotent); a restart keeps it stopped."""
    sampler = _sampler()
    sampler.stop(reason="requested over the API", requested_by="api")
    return jsonify(_doc(sampler))
