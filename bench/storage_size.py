"""Bytes per sample row on PostgreSQL, before and after migration 0013, and what the API's
sample queries read with each index choice.

    python -m bench.storage_size                   # 1,000,000 rows: 1,000 GPUs x 1,000 s
    python -m bench.storage_size --rows 20000      # a quick run

Each layout gets a fresh database on ``--pg-url`` (default: GPUHISTORY_TEST_POSTGRES, else
the local server), made by the real migrations, and ``--rows`` samples of ``--gpus`` GPUs
at 1 Hz, inserted in tick order (each second, every GPU) with the indexes in place, as the
samplers write them. Values are those of a busy H200 (no fan: ``fan_pct`` NULL, as NVML
reports for it). Then ``VACUUM ANALYZE`` and sizes from ``pg_relation_size`` (heap, with
its TOAST and maps: ``pg_table_size``), ``pg_indexes_size`` and ``pg_total_relation_size``
summed over the partitions (``pg_partition_tree``).

Layouts: ``before`` (migration 0008: the column order of 0001, one table, primary-key
btree), ``after`` (0013: alignment order, daily partitions, the primary key per partition)
``after-reindexed`` (``after`` with its indexes rebuilt once loaded: what a day that is
over would take after ``REINDEX``, the samplers' interleaved inserts having left the
primary key's pages about two thirds full) and ``after-brin`` (the same columns,
unpartitioned, a BRIN index on ``ts_ms`` instead of the primary key: the alternative that
was measured and not taken).

The queries are the shapes the API runs on raw samples: the newest sample of a GPU
(storage/queries.py: ``ts_ms = (SELECT max(ts_ms) ... WHERE gpu_id = ?)``) and a GPU's
five minutes (documents.history_doc, postmortem.context_samples). Their cost is reported
as the shared buffers EXPLAIN (ANALYZE, BUFFERS) counts, not as time: the figure does not
depend on what else the machine is doing.

Prints a table and writes ``bench/results/storage_size-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.__main__ import render
from bench.common import Figure, machine
from gpuhistory.storage import partitions
from gpuhistory.storage.engine import make_engine, upgrade

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LAYOUTS = ("before", "after", "after-reindexed", "after-brin")
PROBE_GPU = 7


def _admin(pg_url: str) -> sa.Engine:
    return sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _generate(base_ms: int, gpus: int, ticks: int) -> str:
    """INSERT ... SELECT of ``ticks`` seconds of ``gpus`` GPUs (ids 1..gpus), tick order."""
    return f"""
    INSERT INTO {{table}} ({partitions.COLUMNS})
    SELECT {base_ms} + t * 1000, CASE WHEN (g + t) % 17 = 0 THEN 4 ELSE 0 END, g,
           (g * 7919 + t * 13) % 143771, 3000 + (g * 31 + t) % 4000,
           CASE WHEN (g + t) % 50 = 0 THEN 1 ELSE 0 END, 40 + (g + t) % 45,
           50 + (g + t) % 40, (g * 3 + t) % 101, 1980 - (g + t) % 200, 3201,
           0, NULL
    FROM generate_series(0, {ticks - 1}) AS t, generate_series(1, {gpus}) AS g
    ORDER BY t, g"""


def _relations(conn: sa.Connection, table: str) -> list[str]:
    """The table's partitions (the DEFAULT one too), or the table itself."""
    leaves = list(conn.execute(sa.text(
        "SELECT relid::text FROM pg_partition_tree(:t) WHERE isleaf"), {"t": table}).scalars())
    return leaves or [table]


def _sizes(conn: sa.Connection, table: str) -> dict[str, int]:
    heap = index = total = 0
    for rel in _relations(conn, table):
        heap += conn.execute(sa.text("SELECT pg_table_size(:r)"), {"r": rel}).scalar_one()
        index += conn.execute(sa.text("SELECT pg_indexes_size(:r)"), {"r": rel}).scalar_one()
        total += conn.execute(sa.text("SELECT pg_total_relation_size(:r)"),
                              {"r": rel}).scalar_one()
    return {"heap": heap, "index": index, "total": total}


def _buffers(conn: sa.Connection, sql: str) -> tuple[int, str]:
    """Shared buffers the statement touched (hit + read) and its plan's scan nodes."""
    plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")).scalar_one()
    top = plan[0]["Plan"]
    scans: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Scan" in node["Node Type"]:
            label = f"{node['Node Type']} on {node.get('Relation Name', '?')}"
            if label not in scans:
                scans.append(label)
        for child in node.get("Plans", []):
            walk(child)
    walk(top)
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"], ", ".join(scans[:3])


def measure(pg_url: str, layout: str, gpus: int, ticks: int) -> dict[str, Any]:
    """Build one layout in a fresh database; its sizes and the queries' buffers."""
    name = f"gpuhistory_size_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = _admin(pg_url)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(pg_url).set(database=name).render_as_string(False)
    engine = make_engine(url)
    try:
        upgrade(engine, "0008" if layout == "before" else "head")
        reindex = layout == "after-reindexed"
        base = partitions.day_of(int(time.time() * 1000)) * partitions.DAY_MS + 3_600_000
        table = "samples"
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO gpus (id, host, gpu_index, uuid, backend, first_seen_ms, "
                "last_seen_ms) SELECT g, 'node-' || (g / 8), g % 8, 'GPU-' || g, 'sim', 0, 0 "
                f"FROM generate_series(1, {gpus}) g"))
            if layout == "after-brin":
                table = "samples_brin"
                conn.execute(sa.text("CREATE TABLE samples_brin (LIKE samples)"))
                conn.execute(sa.text("CREATE INDEX ix_samples_brin_ts ON samples_brin "
                                     "USING brin (ts_ms)"))
            conn.execute(sa.text(_generate(base, gpus, ticks).format(table=table)))
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if reindex:
                for rel in _relations(conn, table):
                    conn.exec_driver_sql(f"REINDEX TABLE {rel}")
            conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            sizes = _sizes(conn, table)
            last = base + (ticks - 1) * 1000
            lo = base + max(0, ticks // 2 - 150) * 1000
            latest = (f"SELECT * FROM {table} s WHERE s.gpu_id = {PROBE_GPU} AND s.ts_ms = "
                      f"(SELECT max(ts_ms) FROM {table} WHERE gpu_id = {PROBE_GPU} "
                      f"AND ts_ms <= {last})")
            window = (f"SELECT * FROM {table} WHERE gpu_id = {PROBE_GPU} AND ts_ms >= {lo} "
                      f"AND ts_ms < {lo + 300_000} ORDER BY ts_ms")
            latest_buffers, latest_plan = _buffers(conn, latest)
            window_buffers, window_plan = _buffers(conn, window)
        return {"layout": layout, "rows": rows, **sizes,
                "latest_buffers": latest_buffers, "latest_plan": latest_plan,
                "window_buffers": window_buffers, "window_plan": window_plan}
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def figures(results: list[dict[str, Any]]) -> list[Figure]:
    out = []
    for r in results:
        n, layout = r["rows"], r["layout"]
        for part in ("heap", "index", "total"):
            out.append(Figure(
                "storage_size", f"{layout}: {part} bytes per row", round(r[part] / n, 1), "B",
                n=n, budget="<= 64 B" if part == "total" else None,
                ok=(r[part] / n <= 64) if part == "total" else None))
        out.append(Figure("storage_size", f"{layout}: newest sample of a GPU",
                          r["latest_buffers"], "buffers", note=f"{layout}: {r['latest_plan']}"))
        out.append(Figure("storage_size", f"{layout}: a GPU's 5 minutes (300 rows)",
                          r["window_buffers"], "buffers", note=f"{layout}: {r['window_plan']}"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="sample rows per layout")
    parser.add_argument("--gpus", type=int, default=1_000, help="GPUs (rows per tick)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--pg-url", default=os.environ.get("GPUHISTORY_TEST_POSTGRES",
                                                           DEFAULT_PG))
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="folder for the JSON result")
    args = parser.parse_args(argv)
    if args.rows < args.gpus or args.gpus < PROBE_GPU:
        parser.error(f"--rows must be at least --gpus, and --gpus at least {PROBE_GPU}")
    started = datetime.now(UTC)
    ticks = args.rows // args.gpus
    results = []
    for layout in args.layouts:
        t0 = time.perf_counter()
        results.append(measure(args.pg_url, layout, args.gpus, ticks))
        print(f"[{layout}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    found = figures(results)
    print(render(found))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"storage_size-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({
        "date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "machine": machine(), "layouts": results, "figures": [f.to_dict() for f in found],
    }, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
