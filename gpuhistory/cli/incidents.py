"""``gpuhistory incidents``: overheat incidents and their post-mortems, from the log or a server.

    gpuhistory incidents --gpu-id 1 --since 2026-11-26T00:00:00Z
    gpuhistory incidents show 42            # the post-mortem
    gpuhistory incidents show 42 --csv > incident-42.csv
    gpuhistory incidents report 42 -o incident-42.html   # one file for a ticket
    gpuhistory incidents rebuild            # redetect everything with today's thresholds

Reading the database (``--db``), the command first brings the incidents up to date (the
incremental scan ``serve`` runs every 10 s), so it also works after an ``import`` with no
server running; ``--no-detect`` skips that. With ``--url`` (GPUHISTORY_URL) it asks a
running server instead. Exit status: 0 ok, 3 no such incident, 6 server unreachable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from gpuhistory.cli.database import require_existing
from gpuhistory.cli.hosts import host_option, local_host, server_host
from gpuhistory.cli.humanize import duration
from gpuhistory.cli.times import time_value
from gpuhistory.domain.processes import where_label

F = TypeVar("F", bound=Callable[..., Any])
EXIT_NOT_FOUND = 3
SERVER_MAX_SAMPLES = 100_000




def source_options(fn: F) -> F:
    """--db, --host (--host-name), --url and --no-detect: where the incidents are read
    from."""
    fn = click.option("--no-detect", is_flag=True, default=None,
                      help="Read the incidents table as it is, without first scanning new "
                           "samples (--db only).")(fn)
    fn = click.option("--url", envvar="GPUHISTORY_URL", show_envvar=True,
                      help="Ask a running server's API instead of reading the database "
                           "(--db is then not used).")(fn)
    fn = host_option()(fn)
    return click.option("--db", envvar="GPUHISTORY_DB", show_envvar=True,
                        help="Database: a SQLite file path or a SQLAlchemy URL "
                             "(default: the user's data dir).")(fn)


def _source(ctx: click.Context, db: str | None, host_name: str | None, url: str | None,
            no_detect: bool | None) -> dict[str, Any]:
    """A subcommand's options, each falling back to the one given to ``incidents``."""
    parent = ctx.obj or {}
    return {"db": db or parent.get("db"), "host_name": host_name or parent.get("host_name"),
            "url": url or parent.get("url"),
            "server_host": server_host(ctx) or parent.get("server_host"),
            "no_detect": bool(no_detect if no_detect is not None else parent.get("no_detect"))}


class _Local:
    """The database, the host asked about (None: every host) and the effective
    configuration."""

    def __init__(self, db: str | None, host_name: str | None, fleet: bool = True) -> None:
        from gpuhistory.assembly import ServeSettings, build

        require_existing(db)
        parts = build(ServeSettings(db=db), "reader")
        click.get_current_context().call_on_close(parts.engine.dispose)
        self.engine, self.clock = parts.engine, parts.clock
        self.host = local_host(host_name, fleet)
        self.config = parts.config  # runtime changes included

    def detect(self) -> None:
        from gpuhistory.analytics.incidents import IncidentDetector

        IncidentDetector(self.engine, self.clock, self.config, host=self.host).run()


def _client(url: str) -> Any:
    from gpuhistory.client import Client

    try:
        return Client(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None


@click.group(invoke_without_command=True)
@source_options
@click.option("--gpu-id", type=click.IntRange(0, 1023),
              help="One GPU slot, every card it held (default: all).")
@click.option("--uuid", help="One card by its UUID.")
@click.option("--since", callback=time_value,
              help="Incidents still going on at or after this time.")
@click.option("--until", callback=time_value,
              help="Incidents that started at or before this time.")
@click.option("--severity", type=click.Choice(["overheat", "severe"]),
              help="Only incidents of this severity.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="Most incidents listed (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's documents).")
@click.pass_context
def incidents(ctx: click.Context, db: str | None, host_name: str | None, url: str | None,
              no_detect: bool | None, gpu_id: int | None, uuid: str | None, since: int | None,
              until: int | None, severity: str | None, limit: int, as_json: bool) -> None:
    """Overheat incidents, newest first; `incidents show ID` prints a post-mortem."""
    ctx.obj = {"db": db, "host_name": host_name, "url": url, "no_detect": no_detect,
               "server_host": server_host(ctx)}
    if ctx.invoked_subcommand is not None:
        return
    if url:
        from gpuhistory.cli.lease import fail
        from gpuhistory.client import ApiError

        try:
            docs = _client(url).request("GET", "/api/gpu/incidents", {
                "gpu_id": gpu_id, "uuid": uuid, "host": server_host(ctx),
                "since": _seconds(since),
                "until": _seconds(until), "severity": severity, "limit": limit})["incidents"]
        except ApiError as exc:
            fail(exc)
    else:
        from gpuhistory.analytics.postmortem import list_incidents
        from gpuhistory.identity import filter_ids

        local = _Local(db, host_name)
        if not no_detect:
            local.detect()
        with local.engine.connect() as conn:
            ids = filter_ids(conn, gpu_id, uuid, local.host)
            docs = list_incidents(conn, local.host, local.clock.now_ms(), gpu_ids=ids,
                                  since_ms=since, until_ms=until, severity=severity,
                                  limit=limit)
    if as_json:
        click.echo(json.dumps({"count": len(docs), "incidents": docs}, indent=2))
    elif not docs:
        click.echo("no incidents", err=True)
    else:
        click.echo(incident_table(docs))


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


@incidents.command("show")
@click.argument("incident_id", type=click.IntRange(1, 2**62))
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print the post-mortem as JSON.")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the samples around the incident as CSV (GPUMetrics columns).")
@click.pass_context
def show(ctx: click.Context, incident_id: int, db: str | None, host_name: str | None,
         url: str | None, no_detect: bool | None, as_json: bool, as_csv: bool) -> None:
    """The post-mortem of one incident: how hot and how long, what the hardware reported,
    transitions, leases, processes; or its samples as CSV."""
    from gpuhistory.analytics.postmortem import metrics_csv

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    source = _source(ctx, db, host_name, url, no_detect)
    if source["url"]:
        doc = _from_server(source["url"], source["server_host"], incident_id,
                           SERVER_MAX_SAMPLES if as_csv else None)
    else:
        doc = _from_db(source, incident_id, 0 if as_csv else None)
    if as_csv:
        pieces = metrics_csv(doc["samples"]) if source["url"] else doc.pop("_csv")
        for piece in pieces:
            click.echo(piece, nl=False)
    elif as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_postmortem(doc))


def _from_server(url: str, host: str | None, incident_id: int,
                 max_samples: int | None) -> dict[str, Any]:
    from gpuhistory.cli.lease import fail
    from gpuhistory.client import ApiError

    try:
        return _client(url).request(
            "GET", f"/api/gpu/incidents/{incident_id}",
            {"max_samples": max_samples, "host": host})
    except ApiError as exc:
        fail(exc)


def _from_db(source: dict[str, Any], incident_id: int,
             max_samples: int | None) -> dict[str, Any]:
    """The post-mortem from the database; with ``max_samples`` 0, every sample as CSV
    pieces under ``_csv`` (for --csv)."""
    from gpuhistory.analytics.postmortem import (
        MAX_CONTEXT_SAMPLES,
        context_samples,
        context_window,
        postmortem,
        samples_csv,
    )

    local, row = _local_incident(source, incident_id)
    now = local.clock.now_ms()
    config = local.config()
    with local.engine.connect() as conn:
        if max_samples == 0:
            since, until = context_window(row, config, now)
            return {"_csv": list(samples_csv(row, context_samples(conn, row, since, until)))}
        return postmortem(conn, row, config, now, _leases(local, row, now),
                          MAX_CONTEXT_SAMPLES if max_samples is None else max_samples)


@incidents.command("report")
@click.argument("incident_id", type=click.IntRange(1, 2**62))
@source_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the file ('-': standard output) [default: "
                   "incident-ID.html in the current folder].")
@click.pass_context
def report(ctx: click.Context, incident_id: int, db: str | None, host_name: str | None,
           url: str | None, no_detect: bool | None, output: str | None) -> None:
    """Write the incident's report: one HTML file that loads nothing when opened (chart,
    styles and data inside), to attach to a ticket or print to PDF."""
    source = _source(ctx, db, host_name, url, no_detect)
    if source["url"]:
        from gpuhistory.cli.lease import fail
        from gpuhistory.client import ApiError

        try:
            html = _client(source["url"]).incident_report(incident_id, source["server_host"])
        except ApiError as exc:
            fail(exc)
    else:
        html = _report_from_db(source, incident_id)
    target = output or f"incident-{incident_id}.html"
    with click.open_file(target, "w", encoding="utf-8", atomic=target != "-") as handle:
        handle.write(html)
    if target != "-":
        size = len(html.encode("utf-8"))
        click.echo(f"wrote {target} ({size / 1024:.0f} KiB)", err=True)


def _report_from_db(source: dict[str, Any], incident_id: int) -> str:
    from gpuhistory.report import AssetMissing, render_report, report_data

    local, row = _local_incident(source, incident_id)
    now = local.clock.now_ms()
    config = local.config()
    with local.engine.connect() as conn:
        data = report_data(conn, row, config, now, _leases(local, row, now))
    try:
        return render_report(data, config, now).html
    except AssetMissing as exc:
        raise click.ClickException(str(exc)) from None


def _local_incident(source: dict[str, Any], incident_id: int) -> tuple[_Local, Any]:
    """The database (scanned first unless --no-detect) and the incident's row; exit 3 when
    there is no such incident."""
    from gpuhistory.analytics.postmortem import get_incident

    local = _Local(source["db"], source["host_name"])
    if not source["no_detect"]:
        local.detect()
    with local.engine.connect() as conn:
        row = get_incident(conn, incident_id, local.host)
    if row is None:
        where = "" if local.host is None else f" on {local.host}"
        click.echo(f"error: incident_not_found: no incident with id {incident_id}{where}",
                   err=True)
        sys.exit(EXIT_NOT_FOUND)
    return local, row


def _leases(local: _Local, row: Any, now: int) -> list[dict[str, Any]]:
    """The lease documents active at any moment of the incident."""
    from gpuhistory.leases.manager import LeaseManager

    manager = LeaseManager(local.engine, row.host, local.clock, local.config)
    end = row.end_ms if row.end_ms is not None else now
    return [lease.to_dict(now) for lease in manager.active_between(row.gpu_id, row.start_ms,
                                                                    end)]


@incidents.command("rebuild")
@click.option("--db", envvar="GPUHISTORY_DB", show_envvar=True,
              help="Database: a SQLite file path or a SQLAlchemy URL.")
@click.option("--host-name", envvar="GPUHISTORY_HOST_NAME", show_envvar=True,
              help="Whose GPUs (default: this machine).")
@click.option("--gpu-id", type=click.IntRange(0, 1023), help="One GPU (default: all).")
@click.pass_context
def rebuild(ctx: click.Context, db: str | None, host_name: str | None,
            gpu_id: int | None) -> None:
    """Redetect all incidents with the thresholds in force now (ids are kept where an
    incident still starts at the same sample)."""
    import sqlalchemy as sa

    from gpuhistory.analytics.incidents import IncidentDetector
    from gpuhistory.storage.schema import gpus

    source = _source(ctx, db, host_name, None, None)
    local = _Local(source["db"], source["host_name"], fleet=False)
    detector = IncidentDetector(local.engine, local.clock, local.config, host=local.host)
    query = sa.select(gpus.c.id).where(gpus.c.host == local.host)
    if gpu_id is not None:
        query = query.where(gpus.c.gpu_index == gpu_id)
    with local.engine.connect() as conn:
        ids = list(conn.execute(query).scalars())
    totals = {"gpus": 0, "inserted": 0, "updated": 0, "deleted": 0}
    for gid in ids:
        result = detector.rebuild(gid)
        for key in totals:
            totals[key] += getattr(result, key)
    click.echo(f"rescanned {totals['gpus']} GPU(s) of {local.host}: {totals['inserted']} "
               f"incident(s) added, {totals['updated']} updated, {totals['deleted']} removed")


# -- text ---------------------------------------------------------------------------------
def incident_table(docs: list[dict[str, Any]]) -> str:
    from gpuhistory.analytics.postmortem import format_duration

    fleet = len({d.get("host") for d in docs}) > 1  # a HOST column for several hosts
    headers = ["ID", *["HOST"] * fleet, "GPU", "START", "END", "DURATION", "PEAK", "MEAN",
               "SEVERITY", "REASONS"]
    rows = [[
        str(d["id"]), *[d.get("host") or "-"] * fleet, str(d["gpu_id"]), d["start"],
        d["end"] or "ongoing",
        format_duration(d["duration_seconds"]), f"{d['peak_temperature_celsius']} C",
        "-" if d["mean_temperature_celsius"] is None else f"{d['mean_temperature_celsius']} C",
        d["severity"], ",".join(d["clock_event_reasons"]) or "-",
    ] for d in docs]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def render_postmortem(doc: dict[str, Any]) -> str:
    from gpuhistory.analytics.postmortem import format_duration

    card, memory = doc["card"], doc["memory"]
    lines = [
        f"Incident {doc['id']}: GPU {doc['gpu_id']} ({doc.get('name') or doc['uuid']}) "
        f"on {doc['host']}",
        doc["summary"] + ".",
        "",
        f"  start        {doc['start']}",
        f"  end          {doc['end'] or 'ongoing'}",
        f"  duration     {format_duration(doc['duration_seconds'])}",
        f"  peak         {doc['peak_temperature_celsius']} C at {doc['peak_at']}",
        f"  mean         {doc['mean_temperature_celsius']} C over {doc['sample_count']} samples",
        f"  severity     {doc['severity']} ({duration(doc['above_critical_seconds'])} above "
        f"{doc['thresholds']['temp_critical']} C)",
        f"  peak power   {doc['peak_power_watts']} W",
        f"  memory       max {memory['max_used_mb']} MiB, avg {memory['avg_used_mb']} MiB "
        f"of {memory['total_mb']} MiB",
    ]
    if card.get("margin_to_slowdown_celsius") is not None:
        lines.append(f"  slowdown     card slows down at {card['slowdown_temp_celsius']} C: "
                     f"{card['margin_to_slowdown_celsius']} C above the peak")
    lines.append("")
    lines.append("Clock-event reasons:" if doc["clock_event_reasons_seen"]
                 else "Clock-event reasons: none reported")
    lines += [f"  {r['name']}: {r['samples']} samples, {duration(r['seconds'])}"
              for r in doc["clock_event_reasons_seen"]]
    throttle = doc.get("throttle_time_seconds")
    if throttle:
        lines.append("Hardware throttle time: " + ", ".join(
            f"{k} {duration(v)}" for k, v in throttle.items() if v is not None))
    lines.append(f"Transitions ({len(doc['transitions'])}):")
    lines += [f"  {t['timestamp']}  {t['from']} -> {t['to']} ({t['cause']}, "
              f"{t['temperature_celsius']} C)" for t in doc["transitions"]]
    lines.append(f"Leases active ({len(doc['leases'])}):")
    lines += [f"  {le['allocation_id']}  {le.get('owner') or '-'}  {le['memory_mb']} MiB  "
              f"granted {le['granted_at']}  {le['status']}" for le in doc["leases"]]
    processes = doc.get("processes")
    if processes is None:
        lines.append("Processes: not recorded")
    else:
        lines.append(f"Processes ({len(processes)}):")
        lines += [f"  {p['pid']}  {p.get('name') or '-'}  {p.get('user') or '-'}  "
                  f"{where_label(p) or '-'}  {p.get('used_memory_mb')} MiB"
                  for p in processes]
    if doc.get("xid_errors"):
        lines.append(f"XID errors: {len(doc['xid_errors'])}")
    lines.append(f"Samples: {doc['samples_total']} from {doc['window']['since']} to "
                 f"{doc['window']['until']} (--csv prints them all)")
    return "\n".join(lines)
