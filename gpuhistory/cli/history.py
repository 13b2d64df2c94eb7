"""``gpuhistory history``: one GPU's history as about ``--points`` buckets, at any resolution.

Reads the log (``--db``) or asks a running server (``--url``), like ``status``; prints a
table, CSV or the API's JSON document. Exit status 3 when the GPU is unknown, 6 when the
server cannot be reached, 2 for a usage error (``--since`` after ``--until``).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import click

from gpuhistory.cli.database import require_existing
from gpuhistory.cli.hosts import host_option, local_host, server_host
from gpuhistory.cli.humanize import duration
from gpuhistory.cli.times import time_value
from gpuhistory.clock import SystemClock

# As in gpuhistory.analytics.history (not imported here, so the CLI starts without
# SQLAlchemy; tests/test_history.py checks they agree).
RESOLUTIONS = ("raw", "1m", "1h", "auto")
DEFAULT_POINTS = 500
MAX_POINTS = 10_000
DEFAULT_RANGE_MS = 3_600_000

CSV_FIELDS = ("timestamp", "samples", "temperature_min", "temperature_avg", "temperature_max",
              "memory_used_max_mb", "load_avg", "power_avg_watts", "power_max_watts", "state",
              "clock_event_reasons", "clock_event_reasons_mask")
EXIT_NOT_FOUND = 3




def _cell(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def history_table(doc: dict[str, Any]) -> str:
    """The buckets as a table under a one-line summary of what was asked and answered."""
    lines = [f"GPU {doc['gpu_id']} ({doc.get('uuid')})  {doc['since']} .. {doc['until']}"
             f"  source {doc['resolution']}"
             f"  buckets of {duration(doc['bucket_seconds'])}  ({doc['count']} buckets)"]
    headers = ["TIME", "SAMPLES", "TEMP MIN", "TEMP AVG", "TEMP MAX", "MEM MAX", "LOAD",
               "POWER AVG", "POWER MAX", "STATE", "REASONS"]
    rows = [[
        b["timestamp"], str(b["samples"]), _cell(b["temperature_min"], " C"),
        _cell(b["temperature_avg"], " C"), _cell(b["temperature_max"], " C"),
        _cell(b["memory_used_max_mb"], " MiB"), _cell(b["load_avg"], " %"),
        _cell(b["power_avg_watts"], " W"), _cell(b["power_max_watts"], " W"), b["state"],
        ",".join(b["clock_event_reasons"]) or "-",
    ] for b in doc["buckets"]]
    if not rows:
        return "\n".join([*lines, "no samples in this range"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def history_csv(doc: dict[str, Any]) -> str:
    """One header row, then one row per bucket; reasons joined with ``|``, empty for null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for b in doc["buckets"]:
        row = {**b, "clock_event_reasons": "|".join(b["clock_event_reasons"])}
        writer.writerow(["" if row[f] is None else row[f] for f in CSV_FIELDS])
    return out.getvalue().rstrip("\n")


def _from_server(url: str, host: str | None, gpu_id: int | None, uuid: str | None,
                 since: int | None, until: int | None, resolution: str,
                 points: int) -> dict[str, Any]:
    from gpuhistory.cli.lease import fail
    from gpuhistory.client import ApiError, Client

    try:
        client = Client(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    try:
        return client.request("GET", "/api/gpu/metrics/history", {
            "gpu_id": gpu_id, "uuid": uuid, "host": host,
            "since": None if since is None else since / 1000,
            "until": None if until is None else until / 1000, "resolution": resolution,
            "points": points})
    except ApiError as exc:
        fail(exc)


def _from_db(db: str | None, host_name: str | None, gpu_id: int | None, uuid: str | None,
             since: int | None, until: int | None, resolution: str,
             points: int) -> dict[str, Any]:
    from gpuhistory.analytics.history import history_buckets_doc
    from gpuhistory.assembly import ServeSettings, build
    from gpuhistory.identity import GpuRef, UnknownGpu, resolve
    from gpuhistory.storage.queries import latest_sample_of

    host = local_host(host_name, fleet=False)
    require_existing(db)
    engine = build(ServeSettings(db=db), "reader").engine
    if until is None:
        now = SystemClock().now_ms()
        until = now if since is None else max(since, now)
    if since is None:
        since = until - DEFAULT_RANGE_MS
    try:
        with engine.connect() as conn:
            try:  # the card in the slot at the end of the range
                card = resolve(conn, GpuRef(gpu_id, uuid, host_name and host), host, until)
            except UnknownGpu as exc:
                click.echo(f"error: gpu_not_found: {exc}", err=True)
                sys.exit(EXIT_NOT_FOUND)
            return history_buckets_doc(conn, latest_sample_of(conn, card), since, until,
                                       resolution, points)
    finally:
        engine.dispose()


@click.command()
@click.option("--db", envvar="GPUHISTORY_DB", show_envvar=True,
              help="Database: a SQLite file path or a SQLAlchemy URL (default: the user's "
                   "data dir).")
@click.option("--gpu-id", type=click.IntRange(0, 1023),
              help="The GPU's slot index on the host (default 0): the card there at --until.")
@click.option("--uuid", help="One card by its UUID instead (or as well).")
@click.option("--since", callback=time_value,
              help="Start (ISO-8601 or epoch seconds; default: an hour before --until).")
@click.option("--until", callback=time_value, help="End (default: now).")
@click.option("--resolution", type=click.Choice(RESOLUTIONS), default="auto",
              show_default=True,
              help="Source: raw samples, 1m or 1h rollups, or auto (the coarsest that still "
                   "gives --points buckets).")
@click.option("--points", default=DEFAULT_POINTS, show_default=True,
              type=click.IntRange(1, MAX_POINTS), help="About how many buckets.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output: a table, CSV, or the API's JSON document.")
@host_option(fleet=False)
@click.option("--url", envvar="GPUHISTORY_URL", show_envvar=True,
              help="Ask a running server's API instead of reading the database "
                   "(--db is then not used).")
@click.pass_context
def history(ctx: click.Context, db: str | None, gpu_id: int | None, uuid: str | None,
            since: int | None, until: int | None, resolution: str, points: int, fmt: str,
            host_name: str | None, url: str | None) -> None:
    """One GPU's history in [--since, --until] as about --points buckets."""
    if since is not None and until is not None and since > until:
        raise click.UsageError("--since must not be after --until")
    if url:
        doc = _from_server(url, server_host(ctx, fleet=False), gpu_id, uuid, since, until,
                           resolution, points)
    else:
        doc = _from_db(db, host_name, gpu_id, uuid, since, until, resolution, points)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    elif fmt == "csv":
        click.echo(history_csv(doc))
    else:
        click.echo(history_table(doc))
