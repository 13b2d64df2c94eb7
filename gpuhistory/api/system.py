"""GET /api/system/status: GPUs, CPU and RAM in one answer (the seed's dashboard hook)."""

from __future__ import annotations

import psutil
from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, ctx
from gpuhistory.api.health import summary
from gpuhistory.api.responses import SystemStatus, errors
from gpuhistory.api.status import all_status
from gpuhistory.clock import iso_utc

bp = APIBlueprint("system", __name__, url_prefix="/api/system", abp_tags=[Tag(name="system")])


def cpu_status() -> dict[str, object]:
    load = psutil.getloadavg()
    return {"percent": psutil.cpu_percent(interval=None), "count": psutil.cpu_count(),
            "load_average": [round(x, 2) for x in load]}


def memory_status() -> dict[str, object]:
    vm = psutil.virtual_memory()
    mib = 1024 * 1024
    return {"total_mb": vm.total // mib, "available_mb": vm.available // mib,
            "used_mb": (vm.total - vm.available) // mib, "percent": vm.percent}


@bp.get("/status", responses={200: SystemStatus, **errors()})
def system_status() -> View:
    """Every GPU's status, the CPU (percent since the last call, load average), RAM, and the
    service's health (``ok`` or ``degraded`` with the reasons, as /healthz says)."""
    c = ctx()
    return jsonify({"timestamp": iso_utc(c.clock.now_ms()), "host": c.host,
                    "gpu": all_status(), "cpu": cpu_status(), "memory": memory_status(),
                    "health": summary(c)})
