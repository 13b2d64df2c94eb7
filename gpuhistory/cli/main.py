"""``gpuhistory``: serve, db, import, status. Every command takes ``--db``.

Options also come from GPUHISTORY_* environment variables (named in ``--help``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from gpuhistory import __version__
from gpuhistory.cli import output
from gpuhistory.clock import SystemClock, parse_time

DB_HELP = "Database: a SQLite file path or a SQLAlchemy URL (default: the user's data dir)."


def db_option(fn: Any) -> Any:
    return click.option("--db", envvar="GPUHISTORY_DB", show_envvar=True, help=DB_HELP)(fn)


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise click.BadParameter("use ISO-8601 (2026-11-26T03:12:00Z) or epoch seconds") \
            from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpuhistory")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """gpuhistory: a GPU monitoring service that remembers."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=min(level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet = logging.WARNING if verbose < 2 else logging.DEBUG
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(quiet)


@cli.command()
@db_option
@click.option("--host", "bind", default="127.0.0.1", show_default=True, envvar="GPUHISTORY_HOST",
              show_envvar=True, help="Address to bind the HTTP API to.")
@click.option("--port", default=8321, show_default=True, type=click.IntRange(0, 65535),
              envvar="GPUHISTORY_PORT", show_envvar=True)
@click.option("--backend", type=click.Choice(["auto", "nvml", "sim"]), default="auto",
              show_default=True, envvar="GPUHISTORY_BACKEND", show_envvar=True,
              help="auto: NVML, or the simulator when no NVIDIA driver is installed.")
@click.option("--trace", type=click.Path(exists=True, dir_okay=False), envvar="GPUHISTORY_TRACE",
              show_envvar=True, help="Trace CSV the sim backend replays (default: bundled).")
@click.option("--sim-gpus", type=click.IntRange(1, 64), envvar="GPUHISTORY_SIM_GPUS",
              show_envvar=True, help="Number of simulated GPUs (default: as in the trace).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), envvar="GPUHISTORY_INTERVAL",
              show_envvar=True, help="Seconds between samples (default 3).")
@click.option("--host-name", envvar="GPUHISTORY_HOST_NAME", show_envvar=True,
              help="Name this machine's GPUs are stored under (default: the hostname).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              envvar="GPUHISTORY_THREADS", show_envvar=True, help="HTTP worker threads.")
def serve(db: str | None, bind: str, port: int, backend: str, trace: str | None,
          sim_gpus: int | None, interval: float | None, host_name: str | None,
          threads: int) -> None:
    """Sample the GPUs and serve the API, in one process, until SIGTERM/SIGINT."""
    from gpuhistory.sampling.backend import BackendUnavailable
    from gpuhistory.service import ServeSettings, Service, is_loopback

    logging.getLogger("gpuhistory").setLevel(logging.INFO)
    if not is_loopback(bind):
        raise click.UsageError(
            f"refusing to bind {bind}: gpuhistory listens on loopback only until API tokens "
            "guard the mutating endpoints; use --host 127.0.0.1")
    settings = ServeSettings(db=db, bind=bind, port=port, backend=backend, trace=trace,
                             sim_gpus=sim_gpus, interval=interval, host_name=host_name,
                             threads=threads)
    try:
        service = Service(settings)
    except BackendUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if service.backend.name == "sim":
        click.secho(f"NOTE: simulated GPUs (backend sim, trace {service.backend.trace.name}); "  # type: ignore[attr-defined]
                    "answers say \"backend\": \"sim\".", fg="yellow", err=True)
    service.run()


@cli.group()
def db() -> None:
    """Database schema: upgrade to the latest migration, or show the current one."""


@db.command("upgrade")
@db_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(db: str | None, revision: str) -> None:
    """Apply the Alembic migrations (safe to run any time, and concurrently)."""
    from gpuhistory.storage.engine import current_revision, make_engine, upgrade

    engine = make_engine(db)
    upgrade(engine, revision)
    click.echo(f"database {engine.url.render_as_string()} at revision {current_revision(engine)}")


@db.command("current")
@db_option
def db_current(db: str | None) -> None:
    """Print the database's migration revision and the latest one available."""
    from gpuhistory.storage.engine import current_revision, head_revision, make_engine

    engine = make_engine(db)
    current, head = current_revision(engine), head_revision()
    click.echo(f"current: {current or '(empty database)'}\nhead:    {head}")
    if current != head:
        sys.exit(1)


@cli.command("import")
@db_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["auto", "trace", "nvidia-smi"]),
              default="auto", show_default=True)
@click.option("--start", callback=_time,
              help="Wall-clock time of t_s = 0 for a trace (ISO-8601 or epoch seconds).")
@click.option("--host-name", envvar="GPUHISTORY_HOST_NAME", show_envvar=True,
              help="Host the imported GPUs belong to (default: this machine).")
@click.option("--timezone", "tz_name", default=None,
              help="Zone of nvidia-smi's local timestamps, e.g. UTC (default: this machine's).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_cmd(db: str | None, file: str, fmt: str, start: int | None, host_name: str | None,
               tz_name: str | None, as_json: bool) -> None:
    """Run a trace or an nvidia-smi CSV log through the classification pipeline."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from gpuhistory.context import machine_name
    from gpuhistory.formats.errors import FormatError
    from gpuhistory.importer import import_file
    from gpuhistory.storage.engine import make_engine, upgrade

    try:
        tz = None if tz_name is None else ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {tz_name!r}", param_hint="--timezone") \
            from None
    engine = make_engine(db)
    upgrade(engine)
    try:
        result = import_file(engine, file, fmt=fmt, start_ms=start,
                             host=host_name or machine_name(), tz=tz)
    except (FormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    summary = output.import_summary(result)
    click.echo(json.dumps(summary, indent=2) if as_json else output.render_summary(summary))


@cli.command()
@db_option
@click.option("--gpu-id", type=click.IntRange(0, 1023), help="One GPU (default: all).")
@click.option("--at", callback=_time, help="Ask about a past time instead of now.")
@click.option("--host-name", envvar="GPUHISTORY_HOST_NAME", show_envvar=True,
              help="Whose GPUs (default: this machine).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's documents).")
def status(db: str | None, gpu_id: int | None, at: int | None, host_name: str | None,
           as_json: bool) -> None:
    """Each GPU's latest state and reading, read from the log."""
    from gpuhistory.api.status import gpu_status
    from gpuhistory.context import machine_name
    from gpuhistory.domain.config import DEFAULT_CONFIG
    from gpuhistory.storage.engine import make_engine, upgrade
    from gpuhistory.storage.queries import latest_samples

    engine = make_engine(db)
    upgrade(engine)
    host = host_name or machine_name()
    now = at if at is not None else SystemClock().now_ms()
    with engine.connect() as conn:
        docs = [gpu_status(conn, e, now, DEFAULT_CONFIG)
                for e in latest_samples(conn, host, gpu_id, at_ms=at)]
    if as_json:
        click.echo(json.dumps({"host": host, "count": len(docs), "gpus": docs}, indent=2))
        return
    if not docs:
        click.echo(f"no GPUs recorded for host {host!r} yet", err=True)
        sys.exit(3)
    click.echo(output.status_table(docs))


def main() -> None:
    cli(prog_name="gpuhistory")


if __name__ == "__main__":
    main()
