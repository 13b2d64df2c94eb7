"""The trace CSV format of ``shared/traces`` (header row; empty cell = not supported).

Columns: t_s, gpu, temperature_c, memory_temperature_c, power_w, sm_clock_mhz,
mem_clock_mhz, utilization_pct, memory_used_mib, memory_total_mib, clock_event_reasons,
pstate. ``t_s`` and ``gpu`` are required in every row; the rest may be empty (NULL).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gpuhistory.domain.reading import Reading
from gpuhistory.formats.errors import FormatError

INT_FIELDS = ("temperature_c", "memory_temperature_c", "sm_clock_mhz", "mem_clock_mhz",
              "utilization_pct", "memory_used_mib", "memory_total_mib",
              "clock_event_reasons", "pstate")
REQUIRED = ("t_s", "gpu")
COLUMNS = ("t_s", "gpu", "temperature_c", "memory_temperature_c", "power_w",
           "sm_clock_mhz", "mem_clock_mhz", "utilization_pct", "memory_used_mib",
           "memory_total_mib", "clock_event_reasons", "pstate")
MAX_GPUS = 1024


@dataclass(frozen=True, slots=True)
class TraceRow:
    t_s: float
    line: int
    reading: Reading


def bundled_trace(name: str = "fleet4_derived.csv") -> Path:
    """A trace shipped with the package (copies of the recorded H100 traces)."""
    return Path(str(resources.files("gpuhistory") / "data" / "traces" / name))


def _number(text: str, column: str, path: str, line: int, integer: bool) -> float | int | None:
    text = text.strip()
    if text == "":
        return None
    try:
        value = float(text) if not integer else int(text, 0) if text[:2].lower() == "0x" \
            else int(float(text))
    except ValueError:
        raise FormatError(path, line, f"column {column!r}: {text[:40]!r} is not a number") \
            from None
    if isinstance(value, float) and not math.isfinite(value):
        raise FormatError(path, line, f"column {column!r}: {text[:40]!r} is not finite")
    if value < 0 or value > 2**63 - 1:
        raise FormatError(path, line, f"column {column!r}: {text[:40]!r} is out of range")
    return value


def read_trace(path: str | os.PathLike[str], uuid_prefix: str | None = None) -> Iterator[TraceRow]:
    """Rows of a trace file in file order, each as a Reading; FormatError on a bad row."""
    name = os.fspath(path)
    prefix = uuid_prefix if uuid_prefix is not None else f"GPU-trace-{Path(name).stem}"
    try:
        handle = open(name, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise FormatError(name, None, f"cannot open: {exc.strerror or exc}") from None
    with handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise FormatError(name, 1, "empty file: expected a header row")
            header = [h.strip() for h in header]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise FormatError(name, 1, f"header lacks required column(s) {missing}; "
                                           f"expected columns {list(COLUMNS)}")
            pos = {column: header.index(column) for column in COLUMNS if column in header}
            previous_t = -math.inf
            for line, cells in enumerate(reader, start=2):
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if len(cells) != len(header):
                    raise FormatError(name, line, f"expected {len(header)} cells, "
                                                  f"found {len(cells)}")
                row = {c: _number(cells[i], c, name, line, c in INT_FIELDS or c == "gpu")
                       for c, i in pos.items()}
                if row["t_s"] is None or row["gpu"] is None:
                    raise FormatError(name, line, "t_s and gpu must not be empty")
                t_s, gpu = float(row["t_s"]), int(row["gpu"])
                if gpu >= MAX_GPUS:
                    raise FormatError(name, line, f"gpu {gpu} is out of range")
                if t_s < previous_t:
                    raise FormatError(name, line, f"t_s {t_s} goes back in time "
                                                  f"(previous {previous_t})")
                previous_t = t_s
                power = row.get("power_w")
                reading = Reading(
                    index=gpu, uuid=f"{prefix}-{gpu}",
                    temperature_c=row.get("temperature_c"),  # type: ignore[arg-type]
                    memory_temperature_c=row.get("memory_temperature_c"),  # type: ignore[arg-type]
                    memory_used_mib=row.get("memory_used_mib"),  # type: ignore[arg-type]
                    memory_total_mib=row.get("memory_total_mib"),  # type: ignore[arg-type]
                    utilization_pct=row.get("utilization_pct"),  # type: ignore[arg-type]
                    power_w=None if power is None else float(power),
                    sm_clock_mhz=row.get("sm_clock_mhz"),  # type: ignore[arg-type]
                    mem_clock_mhz=row.get("mem_clock_mhz"),  # type: ignore[arg-type]
                    clock_event_reasons=row.get("clock_event_reasons"),  # type: ignore[arg-type]
                    pstate=row.get("pstate"),  # type: ignore[arg-type]
                )
                yield TraceRow(t_s=t_s, line=line, reading=reading)
        except UnicodeDecodeError:
            raise FormatError(name, None, "not UTF-8 text (is this a trace CSV?)") from None
        except csv.Error as exc:
            raise FormatError(name, None, f"malformed CSV: {exc}") from None
