"""GET /api/gpu/processes: which GPUs a Slurm job, a user or a container used, when, and
how much memory — from the processes the sampler records (gpuhistory/storage/processes.py).
"""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, ctx, filter_ids, host_filter, time_range
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import ProcessList, errors
from gpuhistory.api.schemas import ProcessesQuery
from gpuhistory.storage.processes import ProcessFilter, find_processes

bp = APIBlueprint("processes", __name__, url_prefix="/api/gpu",
                  abp_tags=[Tag(name="processes")])


@bp.get("/processes", responses={200: ProcessList, **errors(400, 404, 422)})
def processes(query: ProcessesQuery) -> View:
    """The compute processes alive at any moment of [since, until] that match every
    filter given — ``user`` (a name or a uid), ``job`` (a Slurm job id), ``container`` (an
    id or its first digits), one slot (``gpu_id``, every card it held) or card (``uuid``)
    on ``host`` (default this server's; ``*`` every host) — oldest first, and per card when
    they were first and last seen, when they ended and the most memory one held. 404 when
    the GPU named was never recorded."""
    c = ctx()
    since, until = time_range(query)
    host = host_filter(query.host)
    with c.engine.connect() as conn:
        gpu_ids = filter_ids(conn, query, host)
        if gpu_ids == []:
            raise ApiError(404, "gpu_not_found", "no GPU recorded matches "
                           f"gpu_id={query.gpu_id} uuid={query.uuid} on "
                           f"{host if host is not None else 'any host'}",
                           {"gpu_id": query.gpu_id, "uuid": query.uuid, "host": host})
        found = find_processes(conn, ProcessFilter(
            since_ms=since, until_ms=until, user=query.user, job=query.job,
            container=query.container.lower() if query.container else None,
            gpu_ids=gpu_ids, host=host), query.limit)
    return jsonify({"count": len(found.processes), "truncated": found.truncated,
                    "gpus": found.gpus, "processes": found.processes})
