"""The trace CSV format of ``shared/traces`` (header row; empty cell = not supported).

Columns: t_s, gpu, temperature_c, memory_temperature_c, power_w, sm_clock_mhz,
mem_clock_mhz, utilization_pct, memory_used_mib, memory_total_mib, clock_event_reasons,
pstate. ``t_s`` and ``gpu`` are required in every row; the rest may be empty (NULL).
Columns may come in any order; unknown columns are ignored.

Reading is fast because ``import`` has a budget (DESIGN §6: ≥ 100,000 samples/s end to
end). The file is read in 1 MiB chunks of whole lines; a chunk made only of digits, dots,
commas and newlines (no sign, exponent, hex, space, quote, NaN or 19-digit run: checked
with two C-speed ``bytes.translate`` passes) is converted with plain ``int``/``float``
calls per cell. Any other chunk, and any line the fast path cannot convert, goes through
the validating path, which names the line and the column of what is wrong.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any

from gpuhistory.domain.reading import Reading
from gpuhistory.formats.errors import FormatError, parse_cell
from gpuhistory.formats.files import MAX_LINE_BYTES, line_too_long, open_regular

INT_FIELDS = ("temperature_c", "memory_temperature_c", "sm_clock_mhz", "mem_clock_mhz",
              "utilization_pct", "memory_used_mib", "memory_total_mib",
              "clock_event_reasons", "pstate")
REQUIRED = ("t_s", "gpu")
COLUMNS = ("t_s", "gpu", "temperature_c", "memory_temperature_c", "power_w",
           "sm_clock_mhz", "mem_clock_mhz", "utilization_pct", "memory_used_mib",
           "memory_total_mib", "clock_event_reasons", "pstate")
MAX_GPUS = 1024
CHUNK_BYTES = 1 << 20

# The Reading fields a trace fills, in the order the fast constructor takes them.
_READING_ARGS = ("index", "uuid", "temperature_c", "memory_temperature_c", "power_w",
                 "sm_clock_mhz", "mem_clock_mhz", "utilization_pct", "memory_used_mib",
                 "memory_total_mib", "clock_event_reasons", "pstate")

# Chunk check: digits and dots become "d"; a clean chunk then holds only "d", "," and "\n"
# and no run of 19 "d"s (which could be an integer beyond 64 bits).
_TO_D = bytes.maketrans(b"0123456789.", b"d" * 11)
_LONG_RUN = b"d" * 19


@dataclass(frozen=True, slots=True)
class TraceRow:
    t_s: float
    line: int
    reading: Reading


def bundled_trace(name: str = "fleet4_derived.csv") -> Path:
    """A trace shipped with the package (copies of the recorded H100 traces)."""
    return Path(str(resources.files("gpuhistory") / "data" / "traces" / name))


def fast_constructor(cls: type, names: Sequence[str]) -> Callable[..., Any]:
    """A positional constructor of the frozen, slotted dataclass ``cls`` taking ``names``.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``
    (2.7 µs for a Reading on the reference machine); setting the slots through their
    descriptors costs 1.1 µs. The object is the same: each field not in ``names`` gets its
    default, as ``__init__`` would give it (tests/test_formats.py checks this against the
    real constructor). A class this does not fit (no slots, a ``__post_init__``, a field
    without a default or outside ``__init__``) gets a wrapper around its real constructor.
    """
    fields = dataclasses.fields(cls)
    by_name = {f.name: f for f in fields}
    fits = (
        "__slots__" in cls.__dict__
        and not hasattr(cls, "__post_init__")
        and all(f.init for f in fields)
        and all(name in by_name for name in names)
        and all(f.name in names or f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING for f in fields)
    )
    if not fits:
        def construct(*args: Any) -> Any:
            return cls(**dict(zip(names, args, strict=True)))
        return construct
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = ["_r = _new(_cls)"]
    for f in fields:
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.name in names:
            value = f.name
        elif f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            value = f"_default_{f.name}"
        else:
            namespace[f"_factory_{f.name}"] = f.default_factory
            value = f"_factory_{f.name}()"
        body.append(f"_set_{f.name}(_r, {value})")
    source = f"def construct({', '.join(names)}):\n    " + "\n    ".join(body) + \
        "\n    return _r\n"
    exec(source, namespace)
    return namespace["construct"]


new_reading = fast_constructor(Reading, _READING_ARGS)
_new_trace_row = fast_constructor(TraceRow, ("t_s", "line", "reading"))


def line_chunks(path: str, chunk_bytes: int | None = None) -> Iterator[tuple[int, bytes, str]]:
    """(number of the first line, raw bytes, text) of whole-line chunks of a UTF-8 file.

    Chunks are about ``chunk_bytes`` (default CHUNK_BYTES) long. CRLF line ends become LF;
    a UTF-8 byte-order mark is dropped. A byte sequence that is not UTF-8, a NUL byte, or a
    line running more than MAX_LINE_BYTES past a chunk is a FormatError naming its line;
    so is a path that is not a regular file (see formats/files.py).
    """
    size = chunk_bytes or CHUNK_BYTES
    with open_regular(path) as handle:
        line = 1
        first = True
        while True:
            data = handle.read(size)
            if not data:
                return
            if not data.endswith(b"\n"):
                tail = handle.readline(MAX_LINE_BYTES)
                data += tail
                if len(tail) == MAX_LINE_BYTES and not tail.endswith(b"\n"):
                    raise line_too_long(path, line + data.count(b"\n"))
            if first:
                data = data.removeprefix(b"\xef\xbb\xbf")
                first = False
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = line + data.count(b"\n", 0, exc.start)
                raise FormatError(path, bad, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                                             "is this a CSV file?") from None
            if "\x00" in text:
                bad = line + text.count("\n", 0, text.index("\x00"))
                raise FormatError(path, bad, "binary data (NUL byte); is this a CSV file?")
            yield line, data, text
            line += data.count(b"\n")


def _to_int(text: str) -> int:
    if text[:2].lower() == "0x":
        return int(text, 16)
    try:
        return int(text)
    except ValueError:
        return int(float(text))


def _number(text: str, column: str, path: str, line: int, integer: bool) -> float | int | None:
    text = text.strip()
    if text == "":
        return None
    return parse_cell(_to_int if integer else float, text, text, column, path, line)


def _clean(data: bytes) -> bool:
    """True when a chunk holds nothing but unsigned decimal numbers, commas and newlines."""
    marked = data.translate(_TO_D)
    return not marked.translate(None, b"d,\n") and marked.find(_LONG_RUN) < 0


def trace_tuples(path: str | os.PathLike[str],
                 uuid_prefix: str | None = None) -> Iterator[tuple[float, int, Reading]]:
    """(t_s, line, reading) for every row of a trace, in file order; FormatError on a bad row.

    The tuple form of :func:`read_trace`, for ``import``'s hot loop.
    """
    name = os.fspath(path)
    prefix = uuid_prefix if uuid_prefix is not None else f"GPU-trace-{Path(name).stem}"
    chunks = line_chunks(name)
    first = next(chunks, None)
    if first is None or not first[2].strip():
        raise FormatError(name, 1, "empty file: expected a header row")
    _, first_data, first_text = first
    header_text, _, rest_text = first_text.partition("\n")
    try:
        header = [h.strip() for h in next(csv.reader([header_text]), [])]
    except csv.Error as exc:
        raise FormatError(name, 1, f"malformed CSV header: {exc}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise FormatError(name, 1, f"header lacks required column(s) {missing}; "
                                   f"expected columns {list(COLUMNS)}")
    width = len(header)
    # Cell positions in COLUMNS order; a column the header lacks reads an appended "".
    positions = [header.index(c) if c in header else width for c in COLUMNS]
    pad = width in positions
    canonical = positions == list(range(len(COLUMNS))) and width == len(COLUMNS)
    pick = itemgetter(*positions)
    uuids = {gpu: f"{prefix}-{gpu}" for gpu in range(16)}
    make = new_reading

    def slow(cells: list[str], line: int) -> tuple[float, int, Reading]:
        """The validating path: strips, hex, quoted cells, precise errors."""
        values = [_number(cells[p], c, name, line, c in INT_FIELDS or c == "gpu")
                  if p < width else None for c, p in zip(COLUMNS, positions, strict=True)]
        if values[0] is None or values[1] is None:
            raise FormatError(name, line, "t_s and gpu must not be empty")
        t_s, gpu = float(values[0]), int(values[1])
        if gpu >= MAX_GPUS:
            raise FormatError(name, line, f"gpu {gpu} is out of range")
        power = values[4]
        return t_s, gpu, make(gpu, uuids.get(gpu) or f"{prefix}-{gpu}", values[2], values[3],
                              None if power is None else float(power), *values[5:])

    def split_slow(text: str, line: int) -> list[str]:
        if '"' not in text:
            return text.split(",")
        try:
            return next(csv.reader([text]), [])
        except csv.Error as exc:
            raise FormatError(name, line, f"malformed CSV: {exc}") from None

    def bad_width(cells: list[str], line: int) -> FormatError:
        return FormatError(name, line, f"expected {width} cells, found {len(cells)}")

    previous_t = -math.inf
    rest_data = first_data[first_data.find(b"\n") + 1:]
    for start, data, text in itertools.chain([(2, rest_data, rest_text)], chunks):
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        fast = _clean(data)
        line = start - 1
        for line_text in lines:
            line += 1
            if fast:
                if not line_text:
                    continue
                cells = line_text.split(",")
                if len(cells) != width:
                    raise bad_width(cells, line)
                if pad:
                    cells.append("")
                try:
                    t, g, tc, mt, pw, sm, mc, ut, mu, mtot, cer, ps = (
                        cells if canonical else pick(cells))
                    t_s = float(t)
                    gpu = int(g)
                    if gpu >= MAX_GPUS:
                        raise ValueError
                    reading = make(
                        gpu, uuids.get(gpu) or f"{prefix}-{gpu}",
                        int(tc) if tc else None, int(mt) if mt else None,
                        float(pw) if pw else None, int(sm) if sm else None,
                        int(mc) if mc else None, int(ut) if ut else None,
                        int(mu) if mu else None, int(mtot) if mtot else None,
                        int(cer) if cer else None, int(ps) if ps else None,
                    )
                except ValueError:
                    t_s, gpu, reading = slow(cells, line)
            else:
                if not line_text.strip():
                    continue
                cells = split_slow(line_text, line)
                if len(cells) == 1 and not cells[0].strip():
                    continue
                if len(cells) != width:
                    raise bad_width(cells, line)
                t_s, gpu, reading = slow(cells, line)
            if t_s < previous_t:
                raise FormatError(name, line, f"t_s {t_s} goes back in time "
                                              f"(previous {previous_t})")
            previous_t = t_s
            yield t_s, line, reading


def read_trace(path: str | os.PathLike[str], uuid_prefix: str | None = None) -> Iterator[TraceRow]:
    """Rows of a trace file in file order, each as a Reading; FormatError on a bad row."""
    make = _new_trace_row
    for t_s, line, reading in trace_tuples(path, uuid_prefix):
        yield make(t_s, line, reading)
