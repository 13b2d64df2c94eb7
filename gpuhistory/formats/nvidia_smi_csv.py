"""Logs written by ``nvidia-smi --query-gpu=timestamp,index,... --format=csv[,nounits] -l N``.

A header row names the queried fields, with the unit in brackets (``memory.used [MiB]``);
each row is one GPU at one time, cells separated by ", ". Without ``nounits`` a value
carries its unit (``45 %``, ``70.12 W``, ``1980 MHz``, ``1234 MiB``); a field the device
does not report reads ``[N/A]``, ``N/A``, ``[Not Supported]``, ``[Unknown Error]`` (any
bracketed text) and becomes None. A lost GPU (``[GPU is lost]``) becomes an unavailable
Reading. ``timestamp`` (``2026/11/26 12:34:56.789``, local time without a zone: read in the
zone given, daylight-saving changes included, by :mod:`gpuhistory.formats.local_time`) and
``index`` are required; unknown columns are ignored; a repeated header row (as
concatenated ``-l`` logs have) is skipped, or, if it names other columns, read anew.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from gpuhistory.domain.reading import Reading
from gpuhistory.formats.errors import MAX_INT, FormatError, parse_cell
from gpuhistory.formats.local_time import LocalClock, RepeatedHour, read_local
from gpuhistory.formats.trace_csv import MAX_GPUS, fast_constructor, line_chunks

REQUIRED = ("timestamp", "index")

# Reading field ← nvidia-smi field names, best first; with each field's kind and unit.
FIELDS: dict[str, tuple[tuple[str, ...], str, str | None]] = {
    "uuid": (("uuid", "gpu_uuid"), "text", None),
    "name": (("name", "gpu_name"), "text", None),
    "temperature_c": (("temperature.gpu",), "int", "C"),
    "memory_temperature_c": (("temperature.memory",), "int", "C"),
    "memory_used_mib": (("memory.used",), "int", "MiB"),
    "memory_total_mib": (("memory.total",), "int", "MiB"),
    "memory_reserved_mib": (("memory.reserved",), "int", "MiB"),
    "utilization_pct": (("utilization.gpu",), "int", "%"),
    "power_w": (("power.draw", "power.draw.average", "power.draw.instant"), "float", "W"),
    "power_limit_w": (("power.limit", "enforced.power.limit"), "float", "W"),
    "sm_clock_mhz": (("clocks.sm", "clocks.current.sm"), "int", "MHz"),
    "mem_clock_mhz": (("clocks.mem", "clocks.current.memory"), "int", "MHz"),
    "clock_event_reasons": (
        ("clocks_event_reasons.active", "clocks_throttle_reasons.active"), "hex", None),
    "pstate": (("pstate",), "pstate", None),
    "fan_pct": (("fan.speed",), "int", "%"),
}

_PSTATE = re.compile(r"[Pp]?(\d{1,2})")


@dataclass(frozen=True, slots=True)
class SmiRow:
    ts_ms: int
    line: int
    reading: Reading


def header_key(cell: str) -> str:
    """``memory.used [MiB]`` → ``memory.used``: a header cell without its unit."""
    return cell.strip().split("[", 1)[0].strip().lower()


def parse_timestamp(text: str, tz: tzinfo | None = None) -> int:
    """nvidia-smi's ``YYYY/MM/DD HH:MM:SS.mmm`` in zone ``tz`` (None: local) → epoch ms.

    One time alone: inside a repeated hour this is the first pass. A log's rows are read
    by :func:`smi_tuples`, which places such times by the rows around them.
    """
    return read_local(text, tz)[0]


# Reading fields an nvidia-smi row fills, in the order new_smi_reading takes them.
_SMI_ARGS = ("index", *FIELDS)
new_smi_reading = fast_constructor(Reading, _SMI_ARGS)
_INF = float("inf")


def _converter(kind: str, unit: str | None) -> Callable[[str], Any] | None:
    """The fast reading of one kind of cell: plain unsigned numbers in the expected unit.

    Anything else raises ValueError, and the row is read again by the validating path,
    which accepts what it can ("45.0" in an integer column) and names what it cannot.
    """
    suffix = f" {unit}" if unit else ""
    cut = -len(suffix) if suffix else None

    def integer(text: str) -> int:
        if suffix and text.endswith(suffix):
            text = text[:cut]
        if not text.isdigit():
            raise ValueError(text)
        value = int(text)
        if value > MAX_INT:
            raise ValueError(text)
        return value

    def real(text: str) -> float:
        if suffix and text.endswith(suffix):
            text = text[:cut]
        if not text[:1].isdigit():  # no sign, nan or inf
            raise ValueError(text)
        value = float(text)
        if value == _INF:  # 1e400
            raise ValueError(text)
        return value

    def mask(text: str) -> int:
        if text[:2] != "0x":
            raise ValueError(text)
        value = int(text, 16)
        if value > MAX_INT:
            raise ValueError(text)
        return value

    def pstate(text: str) -> int:
        if text[:1] != "P" or not text[1:].isdigit() or int(text[1:]) > 15:
            raise ValueError(text)
        return int(text[1:])

    return {"text": None, "int": integer, "float": real, "hex": mask,
            "pstate": pstate}[kind]


class _Header:
    """Where each field sits in rows under one header line, and how to read it."""

    def __init__(self, cells: list[str], path: str, line: int) -> None:
        keys = [header_key(c) for c in cells]
        missing = [k for k in REQUIRED if k not in keys]
        if missing:
            raise FormatError(path, line, _missing_message(cells, missing))
        self.text = ",".join(c.strip() for c in cells)
        self.width = len(cells)
        self.timestamp = keys.index("timestamp")
        self.index = keys.index("index")
        self.columns: list[tuple[int, str, str, str | None, str]] = []
        # The fast plan: (argument slot of new_smi_reading, cell position, converter).
        self.plan: list[tuple[int, int, Callable[[str], Any] | None]] = []
        for field, (names, kind, unit) in FIELDS.items():
            for name in names:
                if name in keys:
                    pos = keys.index(name)
                    self.columns.append((pos, field, kind, unit, cells[pos].strip()))
                    self.plan.append((_SMI_ARGS.index(field), pos, _converter(kind, unit)))
                    break


def _missing_message(cells: list[str], missing: list[str]) -> str:
    try:
        parse_timestamp(cells[0])
    except (ValueError, IndexError):
        pass
    else:
        return ("no header row (was the log written with --format=csv,noheader?): the "
                "import needs the header to know the columns")
    return (f"header lacks required column(s) {missing}; expected an nvidia-smi "
            "--query-gpu=timestamp,index,... --format=csv log")


def _number(text: str, kind: str, unit: str | None, column: str, path: str,
            line: int) -> int | float:
    value_text, _, got_unit = text.partition(" ")
    got_unit = got_unit.strip()
    if got_unit and got_unit != unit:
        raise FormatError(path, line, f"column {column!r}: {text[:40]!r} has unit "
                                      f"{got_unit!r}, expected {unit or 'none'}")
    if kind == "pstate":
        match = _PSTATE.fullmatch(value_text)
        if match is None or int(match.group(1)) > 15:
            raise FormatError(path, line, f"column {column!r}: {text[:40]!r} is not a "
                                          "performance state P0 to P15")
        return int(match.group(1))
    return parse_cell(_CONVERT.get(kind, _to_int), value_text, text, column, path, line)


def _hex(text: str) -> int:
    return int(text, 16) if text[:2].lower() == "0x" else int(text)


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return round(float(text))


_CONVERT: dict[str, Callable[[str], int | float]] = {"hex": _hex, "float": float}


def smi_tuples(path: str | os.PathLike[str],
               tz: tzinfo | None = None) -> Iterator[tuple[int, int, Reading]]:
    """(epoch ms, line, reading) for every row of an nvidia-smi CSV log, in file order.

    ``tz`` is the zone the log's timestamps were written in (None: this machine's local
    zone, with its daylight-saving rules). Rows inside an hour the clocks repeat are placed
    by each GPU's step back (see :mod:`gpuhistory.formats.local_time`), so they are yielded
    once the log has left that hour. FormatError, naming the line, for a bad row, a time
    that never happened in ``tz``, or a repeated time the rows do not place.
    """
    name = os.fspath(path)
    stem = Path(name).stem
    header: _Header | None = None
    previous_ms = -1
    clock = LocalClock(name, tz)
    repeated = RepeatedHour(name, tz)
    uuids = {index: f"GPU-nvsmi-{stem}-{index}" for index in range(MAX_GPUS)}

    def in_order(ts_ms: int, line: int) -> None:
        nonlocal previous_ms
        if ts_ms < previous_ms:
            raise FormatError(name, line, "timestamp goes back in time (previous row "
                                          f"{(previous_ms - ts_ms) / 1000:g} s later)")
        previous_ms = ts_ms

    def placed() -> Iterator[tuple[int, int, Reading]]:
        for ts_ms, line, reading in repeated.place():
            in_order(ts_ms, line)
            yield ts_ms, line, reading

    for start, _, text in line_chunks(name):
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for line, line_text in enumerate(lines, start=start):
            if not line_text.strip():
                continue
            cells = line_text.split(",")
            if header is None:
                header = _Header(cells, name, line)
                continue
            if "timestamp" in line_text and any(header_key(c) == "timestamp" for c in cells):
                if ",".join(c.strip() for c in cells) != header.text:
                    header = _Header(cells, name, line)  # a log of other columns follows
                continue
            if len(cells) != header.width:
                raise FormatError(name, line, f"expected {header.width} cells, "
                                              f"found {len(cells)}")
            local = clock.read(cells[header.timestamp], line)
            try:
                reading = _fast_reading(cells, header, uuids)
            except (ValueError, OverflowError):
                reading = _reading(cells, header, name, line, stem)
            if local.ambiguous:
                if not repeated.holds(local):
                    yield from placed()
                repeated.add(local, reading.index, line, reading)
                continue
            if repeated:
                yield from placed()
            in_order(local.early, line)
            yield local.early, line, reading
    if repeated:
        yield from placed()
    if header is None:
        raise FormatError(name, 1, "empty file: expected a header row")


def _fast_reading(cells: list[str], header: _Header, uuids: dict[int, str]) -> Reading:
    """A row of plain cells, quickly; ValueError for anything the validating path must see."""
    index_text = cells[header.index].strip()
    if not index_text.isdigit():
        raise ValueError(index_text)
    index = int(index_text)
    if index >= MAX_GPUS:
        raise ValueError(index_text)
    args: list[Any] = [None] * len(_SMI_ARGS)
    args[0] = index
    for slot, pos, convert in header.plan:
        text = cells[pos].strip()
        if not text or text == "N/A":
            continue
        if text[0] == "[" and text[-1] == "]":
            if "lost" in text.lower():
                raise ValueError(text)  # an unavailable reading: the slow path builds it
            continue
        args[slot] = text if convert is None else convert(text)
    if args[1] is None:
        args[1] = uuids[index]
    return new_smi_reading(*args)


def _reading(cells: list[str], header: _Header, path: str, line: int, stem: str) -> Reading:
    """The validating path: every cell checked, a FormatError naming what is wrong."""
    index_text = cells[header.index].strip()
    if not (index_text.isascii() and index_text.isdigit()) or int(index_text) >= MAX_GPUS:
        raise FormatError(path, line, f"column 'index': {index_text[:40]!r} is not a GPU "
                                      f"index (0 to {MAX_GPUS - 1})")
    index = int(index_text)
    values: dict[str, Any] = {}
    lost = None
    for pos, field, kind, unit, column in header.columns:
        text = cells[pos].strip()
        if not text or text == "N/A" or (text[0] == "[" and text[-1] == "]"):
            if "lost" in text.lower():
                lost = text.strip("[]")
            continue
        values[field] = text if kind == "text" else _number(text, kind, unit, column, path,
                                                            line)
    uuid = values.pop("uuid", None) or f"GPU-nvsmi-{stem}-{index}"
    if lost is not None:
        return Reading(index=index, uuid=uuid, name=values.get("name"), available=False,
                       error=lost)
    return Reading(index=index, uuid=uuid, **values)


def read_nvidia_smi(path: str | os.PathLike[str],
                    tz: tzinfo | None = None) -> Iterator[SmiRow]:
    """Rows of an nvidia-smi CSV log in file order; FormatError (naming the line) on a bad row."""
    for ts_ms, line, reading in smi_tuples(path, tz):
        yield SmiRow(ts_ms=ts_ms, line=line, reading=reading)

