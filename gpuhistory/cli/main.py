"""``gpuhistory``: serve, sampler, api, db, import, status, history, incidents. Every
command takes ``--db``.

Options also come from GPUHISTORY_* environment variables (named in ``--help``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from gpuhistory import __version__
from gpuhistory.cli.database import require_existing
from gpuhistory.cli.history import history
from gpuhistory.cli.hosts import ALL_HOSTS, host_option, local_host, server_host
from gpuhistory.cli.incidents import incidents
from gpuhistory.cli.lease import lease
from gpuhistory.cli.times import time_value
from gpuhistory.clock import iso_utc
from gpuhistory.wsgi.settings import ConnectionLimits

LIMITS = ConnectionLimits()
DB_HELP = "Database: a SQLite file path or a SQLAlchemy URL (default: the user's data dir)."


def db_option(fn: Any) -> Any:
    return click.option("--db", envvar="GPUHISTORY_DB", show_envvar=True, help=DB_HELP)(fn)




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


def _bind_options(fn: Any) -> Any:
    """--host/--port/--threads and the connection limits: the HTTP server's (``serve`` and
    ``api``; docs/configuration.md#http-connections)."""
    for option in reversed([
        click.option("--host", "bind", default="127.0.0.1", show_default=True,
                     envvar="GPUHISTORY_HOST", show_envvar=True,
                     help="Address to bind the HTTP API to."),
        click.option("--port", default=8321, show_default=True, type=click.IntRange(0, 65535),
                     envvar="GPUHISTORY_PORT", show_envvar=True),
        click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
                     envvar="GPUHISTORY_THREADS", show_envvar=True,
                     help="HTTP worker threads."),
        click.option("--max-connections", default=LIMITS.max_connections,
                     show_default=True, type=click.IntRange(1, 65536),
                     envvar="GPUHISTORY_MAX_CONNECTIONS", show_envvar=True,
                     help="Open HTTP connections, all clients together."),
        click.option("--max-client-connections", default=LIMITS.max_client_connections,
                     show_default=True, type=click.IntRange(0, 65536),
                     envvar="GPUHISTORY_MAX_CLIENT_CONNECTIONS", show_envvar=True,
                     help="Open HTTP connections per client address (0: no limit)."),
        click.option("--read-timeout", default=LIMITS.read_timeout,
                     show_default=True, type=click.IntRange(1, 3600),
                     envvar="GPUHISTORY_READ_TIMEOUT", show_envvar=True,
                     help="Seconds a request may take to arrive, from its first byte."),
        click.option("--idle-timeout", default=LIMITS.idle_timeout,
                     show_default=True, type=click.IntRange(1, 86400),
                     envvar="GPUHISTORY_IDLE_TIMEOUT", show_envvar=True,
                     help="Seconds an HTTP connection may wait between requests."),
    ]):
        fn = option(fn)
    return fn


def _sampler_options(fn: Any) -> Any:
    """--backend/--trace/--sim-gpus/--interval: the sampler's (``serve`` and ``sampler``)."""
    for option in reversed([
        click.option("--backend", type=click.Choice(["auto", "nvml", "sim"]), default="auto",
                     show_default=True, envvar="GPUHISTORY_BACKEND", show_envvar=True,
                     help="auto: NVML, or the simulator when no NVIDIA driver is installed."),
        click.option("--trace", type=click.Path(exists=True, dir_okay=False),
                     envvar="GPUHISTORY_TRACE", show_envvar=True,
                     help="Trace CSV the sim backend replays (default: bundled)."),
        click.option("--sim-gpus", type=click.IntRange(1, 64), envvar="GPUHISTORY_SIM_GPUS",
                     show_envvar=True, help="Number of simulated GPUs (default: as in the trace)."),
        click.option("--interval", type=click.FloatRange(0.1, 3600),
                     envvar="GPUHISTORY_INTERVAL", show_envvar=True,
                     help="Seconds between samples (default 3)."),
    ]):
        fn = option(fn)
    return fn


def _common_options(fn: Any) -> Any:
    """--db/--host-name/--config: every role's."""
    for option in reversed([
        db_option,
        click.option("--host-name", envvar="GPUHISTORY_HOST_NAME", show_envvar=True,
                     help="Name this machine's GPUs are stored under (default: the hostname)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     envvar="GPUHISTORY_CONFIG", show_envvar=True,
                     help="TOML file of thresholds and policies (see docs/configuration.md)."),
        click.option("--db-pool-size", type=click.IntRange(1, 1000),
                     envvar="GPUHISTORY_DB_POOL_SIZE", show_envvar=True,
                     help="Database connections this process keeps at most, with no "
                          "overflow (default: 1 for sampler; for serve and api a pool of "
                          "5 plus 10 overflow on PostgreSQL, 32 plus 32 on SQLite)."),
    ]):
        fn = option(fn)
    return fn


def _reader(db: str | None) -> Any:
    """The ``reader`` role's parts (the migrated database and the effective configuration),
    disposed of when the command ends."""
    from gpuhistory.assembly import ServeSettings, build

    parts = build(ServeSettings(db=db), "reader")
    click.get_current_context().call_on_close(parts.engine.dispose)
    return parts


def _run_service(role: str, **options: Any) -> None:
    """Check the bind/token rules, build the role's ``Service`` and run it."""
    import sqlalchemy as sa

    from gpuhistory.config.layers import ConfigFileError
    from gpuhistory.sampling.backend import BackendUnavailable
    from gpuhistory.sampling.claim import SamplerBusy
    from gpuhistory.service import EXIT_UNSAVED, ServeSettings, Service, is_loopback
    from gpuhistory.storage.engine import DatabaseUrlError

    logging.getLogger("gpuhistory").setLevel(logging.INFO)
    token = os.environ.get("GPUHISTORY_TOKEN") or None
    bind = options.get("bind", "127.0.0.1")
    if role != "sampler":
        if not is_loopback(bind) and not token:
            raise click.UsageError(
                f"refusing to bind {bind} without an API token: set GPUHISTORY_TOKEN (it then "
                "guards every mutating endpoint), or bind 127.0.0.1")
        if token is not None and len(token) < 16:
            raise click.UsageError("GPUHISTORY_TOKEN must be at least 16 characters")
    settings = ServeSettings(api_token=token if role != "sampler" else None, **options)
    try:
        service = Service(settings, role=role)
    except DatabaseUrlError as exc:
        raise click.UsageError(f"--db: {exc}") from None
    except (BackendUnavailable, ConfigFileError) as exc:
        raise click.ClickException(str(exc)) from None
    except sa.exc.OperationalError as exc:  # the database is down, unreachable or unreadable
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise click.ClickException(f"cannot open the database: {reason}") from None
    if service.backend is not None and service.backend.name == "sim":
        from gpuhistory.sampling.sim import SimBackend

        assert isinstance(service.backend, SimBackend)
        click.secho(f"NOTE: simulated GPUs (backend sim, trace {service.backend.trace.name}); "
                    "answers say \"backend\": \"sim\".", fg="yellow", err=True)
    try:
        service.run()
    except SamplerBusy as exc:
        service.engine.dispose()
        raise click.ClickException(str(exc)) from None
    if service.unsaved:
        logging.getLogger("gpuhistory").error(
            "stopped, but the database refused the final writes (%s): exit status %d",
            ", ".join(service.unsaved), EXIT_UNSAVED)
        sys.exit(EXIT_UNSAVED)


@cli.command()
@_common_options
@_bind_options
@_sampler_options
def serve(**options: Any) -> None:
    """Sample the GPUs and serve the API, in one process, until SIGTERM/SIGINT.

    Binding a non-loopback address needs an API token in GPUHISTORY_TOKEN; it then guards
    every mutating endpoint (Authorization: Bearer <token>).
    """
    _run_service("both", **options)


@cli.command()
@_common_options
@_sampler_options
def sampler(**options: Any) -> None:
    """Sample the GPUs (and reap leases, roll up, detect incidents, apply retention) with no
    HTTP server, until SIGTERM/SIGINT. Run exactly one per host; serve it with ``api``.
    """
    _run_service("sampler", **options)


@cli.command()
@_common_options
@_bind_options
def api(**options: Any) -> None:
    """Serve the HTTP API only (no sampler, no backend) until SIGTERM/SIGINT.

    Several may serve one database. Monitoring start/stop answer 409 no_sampler; config
    changes reach the sampler process within a second. Binding a non-loopback address needs
    GPUHISTORY_TOKEN, as for ``serve``.
    """
    _run_service("api", **options)


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
    click.get_current_context().call_on_close(engine.dispose)
    upgrade(engine, revision)
    click.echo(f"database {engine.url.render_as_string()} at revision {current_revision(engine)}")


@db.command("current")
@db_option
def db_current(db: str | None) -> None:
    """Print the database's migration revision and the latest one available."""
    from gpuhistory.storage.engine import current_revision, head_revision, make_engine

    engine = make_engine(db)
    click.get_current_context().call_on_close(engine.dispose)
    current, head = current_revision(engine), head_revision()
    click.echo(f"current: {current or '(empty database)'}\nhead:    {head}")
    if current != head:
        sys.exit(1)


@cli.command("import")
@db_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["auto", "trace", "nvidia-smi"]),
              default="auto", show_default=True)
@click.option("--start", callback=time_value,
              help="Wall-clock time of t_s = 0 for a trace (ISO-8601 or epoch seconds).")
@click.option("--host-name", envvar="GPUHISTORY_HOST_NAME", show_envvar=True,
              help="Host the imported GPUs belong to (default: this machine).")
@click.option("--timezone", "tz_name", default=None,
              help="Zone of nvidia-smi's local timestamps: a name (Europe/Berlin, UTC) or a "
                   "fixed offset (+01:00); default: this machine's.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_cmd(db: str | None, file: str, fmt: str, start: int | None, host_name: str | None,
               tz_name: str | None, as_json: bool) -> None:
    """Run a trace or an nvidia-smi CSV log through the classification pipeline."""
    from gpuhistory.cli import output
    from gpuhistory.context import machine_name
    from gpuhistory.formats.errors import FormatError
    from gpuhistory.formats.local_time import parse_zone
    from gpuhistory.importer import import_file

    try:
        tz = None if tz_name is None else parse_zone(tz_name)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}: use a zone name such as Europe/Berlin or UTC, or "
                                 "a fixed offset such as +01:00", param_hint="--timezone") \
            from None
    from gpuhistory.importer import detect_format

    try:
        kind = detect_format(file) if fmt == "auto" else fmt
    except (FormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if kind == "trace" and start is None:
        raise click.UsageError("a trace's times are seconds since it started: give --start, "
                               "the wall-clock time of t_s = 0 (e.g. 2026-11-26T03:00:00Z)")
    engine = _reader(db).engine
    try:
        result = import_file(engine, file, fmt=fmt, start_ms=start,
                             host=host_name or machine_name(), tz=tz)
    except (FormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    summary = output.import_summary(result)
    click.echo(json.dumps(summary, indent=2) if as_json else output.render_summary(summary))


# What one look at the GPUs gives: the host asked about, the status documents, the processes.
Frame = tuple[str | None, list[dict[str, Any]], dict[tuple[str, int], list[dict[str, Any]]] | None]


@cli.command()
@db_option
@click.option("--gpu-id", type=click.IntRange(0, 1023),
              help="One GPU slot (default: all): the card there at --at, or now.")
@click.option("--uuid", help="One card by its UUID.")
@click.option("--at", callback=time_value,
              help="Ask about a past time instead of now (ISO-8601, epoch seconds, or -10m).")
@host_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's documents).")
@click.option("--url", envvar="GPUHISTORY_URL", show_envvar=True,
              help="Ask a running server's API instead of reading the database "
                   "(--db is then not used).")
@click.option("-w", "--watch", type=click.FloatRange(0.1, 3600), is_flag=False,
              flag_value=2.0, default=None, metavar="[SECONDS]",
              help="Redraw every SECONDS (default 2) until Ctrl-C, like `watch gpustat`.")
@click.option("-p", "--processes", "show_processes", is_flag=True,
              help="The running compute processes under each GPU: pid, name, MiB, and "
                   "(when recorded) user and Slurm job, container, pod or systemd unit.")
@click.pass_context
def status(ctx: click.Context, db: str | None, gpu_id: int | None, uuid: str | None,
           at: int | None, host_name: str | None, as_json: bool, url: str | None,
           watch: float | None, show_processes: bool) -> None:
    """Each GPU's latest state and reading, read from the log (or a server with --url);
    --host '*' shows every host sharing the database. Colour on a terminal only (NO_COLOR
    turns it off)."""
    from gpuhistory.cli import output

    if watch is not None and (as_json or at is not None):
        raise click.UsageError("--watch redraws the table of now: not with --json or --at")
    if url:
        fetch = _server_frames(url, gpu_id, uuid, at, server_host(ctx), show_processes)
    else:
        fetch = _db_frames(db, gpu_id, uuid, at, host_name, show_processes)
    if watch is None:
        host, docs, processes = fetch()
        _print_status(host, docs, as_json, processes)
        return
    from gpuhistory.cli.watch import watch as watch_frames

    def frame() -> Any:
        host, docs, processes = fetch()
        if not docs:
            return f"no GPUs recorded for host {host!r} yet"
        return output.status_table(docs, processes)

    where = url or (local_host(host_name) or ALL_HOSTS)
    watch_frames(frame, watch, f"gpuhistory status ({where})", output.console())


def _db_frames(db: str | None, gpu_id: int | None, uuid: str | None, at: int | None,
               host_name: str | None, show_processes: bool) -> Callable[[], Frame]:
    """A function that reads the status documents (and processes) from the database: a
    slot or UUID resolves to its card by the one identity rule; asked about a time before
    a card's first sample, the card has nothing to say (exit 3 when none has)."""
    from gpuhistory.cli.processes import running_processes
    from gpuhistory.documents import status_docs
    from gpuhistory.identity import GpuRef, UnknownGpu, resolve_latest
    from gpuhistory.storage.queries import latest_samples

    host = local_host(host_name)
    require_existing(db)
    parts = _reader(db)
    engine, clock, store = parts.engine, parts.clock, parts.config

    def fetch() -> Frame:
        now = at if at is not None else clock.now_ms()
        config = store.current()  # runtime changes included
        with engine.connect() as conn:
            if (gpu_id is not None or uuid is not None) and (
                    host is not None or uuid is not None):
                try:
                    entries = [resolve_latest(conn, GpuRef(gpu_id, uuid, host_name and host),
                                              host or "", clock.now_ms(), at)]
                except UnknownGpu as exc:
                    click.echo(f"error: gpu_not_found: {exc}", err=True)
                    sys.exit(3)
            else:
                entries = latest_samples(conn, host, gpu_id, at_ms=at, now_ms=now)
            if at is not None:  # a card with no sample by then has nothing to say about it
                entries = [e for e in entries if e.ts_ms is not None]
                if not entries:
                    click.echo(f"no samples recorded for {_asked(host, gpu_id, uuid)} at or "
                               f"before {iso_utc(at)}", err=True)
                    sys.exit(3)
            docs = status_docs(entries, now, config, conn=conn)
            processes = running_processes(
                conn, [(e.gpu.id, e.gpu.host, e.gpu.index) for e in entries], at) \
                if show_processes else None
        return host or ALL_HOSTS, docs, processes

    return fetch


def _asked(host: str | None, gpu_id: int | None, uuid: str | None) -> str:
    if uuid is not None:
        return f"GPU {uuid}"
    where = f"host {host!r}" if host is not None else "any host"
    return where if gpu_id is None else f"GPU {gpu_id} of {where}"


def _server_frames(url: str, gpu_id: int | None, uuid: str | None, at_ms: int | None,
                   host: str | None, show_processes: bool) -> Callable[[], Frame]:
    """A function that asks the server's API for the status documents (exit 3/6 as
    lease); with -p, the processes each document carries."""
    from gpuhistory.cli.lease import fail
    from gpuhistory.cli.processes import from_status
    from gpuhistory.client import ApiError, Client

    try:
        client = Client(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    at = None if at_ms is None else at_ms / 1000

    def documents() -> tuple[str | None, list[dict[str, Any]]]:
        try:
            if uuid is not None:
                doc = client.request("GET", "/api/gpu/status",
                                     {"gpu_id": gpu_id, "uuid": uuid, "at": at, "host": host})
                return doc.get("host"), [doc]
            if gpu_id is None:
                body = client.request("GET", "/api/gpu/status/all", {"at": at, "host": host})
                return body["host"], body["gpus"]
            if host == ALL_HOSTS:
                body = client.request("GET", "/api/gpu/status/all", {"at": at, "host": host})
                return host, [doc for doc in body["gpus"] if doc["gpu_id"] == gpu_id]
            doc = client.request("GET", "/api/gpu/status",
                                 {"gpu_id": gpu_id, "at": at, "host": host})
            return doc.get("host"), [doc]
        except ApiError as exc:
            fail(exc)

    def fetch() -> Frame:
        where, docs = documents()
        processes = from_status(docs) if show_processes else None
        return where, [{k: v for k, v in d.items() if k != "processes"} for d in docs], \
            processes

    return fetch


def _print_status(host: str | None, docs: list[dict[str, Any]], as_json: bool,
                  processes: dict[tuple[str, int], list[dict[str, Any]]] | None = None) -> None:
    """The documents as JSON or a table (with a HOST column when several hosts answer);
    exit 3 when there are none."""
    from gpuhistory.cli import output

    if as_json:
        if processes is not None:
            docs = [{**d, "processes": processes.get((d["host"], d["gpu_id"]), [])}
                    for d in docs]
        click.echo(json.dumps({"host": host, "count": len(docs), "gpus": docs}, indent=2))
        return
    if not docs:
        click.echo(f"no GPUs recorded for host {host!r} yet", err=True)
        sys.exit(3)
    output.show(output.status_table(docs, processes))


cli.add_command(lease)
cli.add_command(history)
cli.add_command(incidents)


def main() -> None:
    cli(prog_name="gpuhistory")


if __name__ == "__main__":
    main()
