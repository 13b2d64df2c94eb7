"""Renderings for the CLI: tables (rich, coloured on a terminal only) and summaries."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import asdict
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gpuhistory.cli.humanize import duration
from gpuhistory.clock import iso_utc
from gpuhistory.domain.processes import where_label

STATE_STYLES = {"OPTIMAL": "green", "NORMAL": "cyan", "THROTTLED": "yellow",
                "CRITICAL": "bold red", "UNAVAILABLE": "magenta"}
PIPE_WIDTH = 1000  # a pipe has no width: never wrap a table row


def console(file: IO[str] | None = None) -> Console:
    """Where the CLI's tables go: colour on a terminal; none when piped, with ``NO_COLOR``
    set (https://no-color.org) or ``TERM=dumb``, and then no escape codes at all."""
    out = file if file is not None else sys.stdout
    plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
    terminal = out.isatty()
    return Console(file=out, highlight=False, soft_wrap=False, emoji=False,
                   color_system=None if plain or not terminal else "auto",
                   width=None if terminal else PIPE_WIDTH)


def _cell(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def state_cell(doc: dict[str, Any]) -> tuple[str, str]:
    """(text, effective state) of a status document's STATE cell: the effective state —
    the one the advice follows — with the raw state beside it when they differ
    (``CRITICAL (raw OPTIMAL)`` during the pause after leaving CRITICAL)."""
    raw = doc["state"]
    effective = (doc.get("effective_state")
                 or (doc.get("throttling") or {}).get("effective_state") or raw)
    return (effective if effective == raw else f"{effective} (raw {raw})"), effective


def status_table(docs: list[dict[str, Any]],
                 processes: dict[tuple[str, int], list[dict[str, Any]]] | None = None
                 ) -> Table:
    """One row per GPU (a HOST column first when the GPUs are on several hosts); with
    ``processes``, the GPU's running processes under it (``└ pid name`` and MiB), a USER
    column when the log says who ran any of them and a JOB/CONTAINER column when it says
    where any ran (Slurm job, pod, container, systemd unit)."""
    fleet = len({d.get("host") for d in docs}) > 1
    listed = [p for ps in (processes or {}).values() for p in ps]
    users = any(p.get("user") for p in listed)
    wheres = any(where_label(p) for p in listed)
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold",
                  padding=(0, 2, 0, 0))
    for header in ["HOST"] * fleet + ["GPU", "NAME"] + ["USER"] * users + [
            "JOB/CONTAINER"] * wheres + ["STATE", "ADVICE", "TEMP", "MEMORY", "LOAD",
                                         "POWER", "REASONS", "AGE", "BACKEND"]:
        table.add_column(header, no_wrap=True)
    for d in docs:
        m = d.get("metrics") or {}
        mem = (f"{m['memory_used_mb']}/{m['memory_total_mb']} MiB"
               if m.get("memory_used_mb") is not None else "-")
        state, effective = state_cell(d)
        style = STATE_STYLES.get(effective, "")
        multiplier = d["throttling"]["speed_multiplier"]
        table.add_row(*[d.get("host") or "-"] * fleet,
                      str(d["gpu_id"]), (d.get("name") or "-")[:32], *[""] * users,
                      *[""] * wheres,
                      Text(state, style=style),
                      Text(f"x{multiplier}", style="" if multiplier == 1 else style),
                      Text(_cell(m.get("temperature_celsius"), " C"), style=style), mem,
                      _cell(m.get("load_percent"), " %"), _cell(m.get("power_watts"), " W"),
                      ",".join(m.get("clock_event_reasons") or []) or "-",
                      duration(d.get("sample_age_seconds")), d["backend"])
        for p in (processes or {}).get((d.get("host", ""), d["gpu_id"]), []):
            used = p.get("used_memory_mb")
            table.add_row(*[""] * fleet, "", f"└ {p['pid']} {p.get('name') or '?'}",
                          *[p.get("user") or "-"] * users,
                          *[where_label(p) or "-"] * wheres, "", "", "",
                          "-" if used is None else f"{used} MiB", "", "", "", "", "",
                          style="dim")
    return table


def show(renderable: Any) -> None:
    """Print to stdout: through rich on a terminal; piped, as plain text without the
    trailing blanks of the table's padding."""
    out = console()
    if out.is_terminal:
        out.print(renderable)
    else:
        out.file.write(render_text(renderable) + "\n")


def render_text(renderable: Any, width: int = PIPE_WIDTH) -> str:
    """A rich renderable as plain text (no escape codes), as a pipe would get it."""
    out = Console(file=io.StringIO(), color_system=None, width=width, highlight=False)
    with out.capture() as captured:
        out.print(renderable)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def import_summary(result: Any) -> dict[str, Any]:
    summary = asdict(result)
    summary["first"] = iso_utc(summary.get("first_ts_ms"))
    summary["last"] = iso_utc(summary.get("last_ts_ms"))
    summary["path"] = str(summary["path"])
    return summary


def render_summary(summary: dict[str, Any]) -> str:
    rate = summary["samples"] / summary["seconds"] if summary.get("seconds") else 0
    return (f"imported {summary['samples']} samples of {summary['gpus']} GPU(s) from "
            f"{summary['path']} ({summary['format']})\n"
            f"  {summary['first']} .. {summary['last']}\n"
            f"  {summary['transitions']} state transitions, {summary['events']} events, "
            f"{summary.get('incidents', 0)} overheat incident(s), "
            f"{duration(summary['seconds'])} ({rate:,.0f} samples/s)")
