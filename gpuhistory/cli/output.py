"""Plain-text renderings for the CLI (tables, summaries)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gpuhistory.clock import iso_utc


def _cell(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def status_table(docs: list[dict[str, Any]]) -> str:
    """One row per GPU; a HOST column first when the GPUs are on several hosts."""
    fleet = len({d.get("host") for d in docs}) > 1
    headers = ["HOST"] * fleet + ["GPU", "NAME", "STATE", "ADVICE", "TEMP", "MEMORY", "LOAD",
                                  "POWER", "REASONS", "AGE", "BACKEND"]
    rows = []
    for d in docs:
        m = d.get("metrics") or {}
        mem = (f"{m['memory_used_mb']}/{m['memory_total_mb']} MiB"
               if m.get("memory_used_mb") is not None else "-")
        t = d["throttling"]
        rows.append([d.get("host") or "-"] * fleet + [
            str(d["gpu_id"]), (d.get("name") or "-")[:32], d["state"],
            f"x{t['speed_multiplier']}", _cell(m.get("temperature_celsius"), " C"), mem,
            _cell(m.get("load_percent"), " %"), _cell(m.get("power_watts"), " W"),
            ",".join(m.get("clock_event_reasons") or []) or "-",
            _cell(d.get("sample_age_seconds"), " s"), d["backend"],
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


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
            f"{summary['seconds']:.2f} s ({rate:,.0f} samples/s)")
