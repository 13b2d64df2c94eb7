"""The app the WSGI server comparison serves: the ``api`` role on a prepared database.

``application`` is built at import from ``GPUHISTORY_BENCH_DB`` (granian imports it by
name); ``python -m bench.wsgi_app --port P`` serves it with the service's own waitress
server (``HttpServer``). Both get one extra route, ``/bench/empty``: the floor, the same
Flask app answering a constant JSON document.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from gpuhistory.service import ServeSettings, Service

HOST = "bench"
THREADS = 8


def build(db: str) -> Any:
    """The api role's WSGI app on ``db``, plus the empty route."""
    app = Service(ServeSettings(db=db, host_name=HOST, threads=THREADS), role="api").app

    def empty() -> dict[str, bool]:
        return {"ok": True}

    app.add_url_rule("/bench/empty", "bench_empty", empty)
    return app


application = build(os.environ["GPUHISTORY_BENCH_DB"]) if "GPUHISTORY_BENCH_DB" in os.environ \
    else None


def main() -> None:
    from gpuhistory.wsgi.server import HttpServer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if application is None:
        raise SystemExit("set GPUHISTORY_BENCH_DB")
    HttpServer(application, "127.0.0.1", args.port, threads=THREADS).run()


if __name__ == "__main__":
    main()
