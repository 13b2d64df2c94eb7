"""Answers with many rows written straight from SQL rows to JSON or CSV text.

A post-mortem lists thousands of samples, a raw history up to ``history_size``, a bucketed
history up to 10,000 buckets. Building a ``Reading``, a ``GPUMetrics`` and a dict for each
row, then walking the dicts again in the JSON encoder, cost ten times the SQL. Here each
row is unpacked once from the tuple the database returned and formatted into its JSON (or
CSV) text by one f-string: what every row shares (the card's identity, limits, backend) is
encoded once per answer, a timestamp is a few table lookups after its day's text (cached,
``clock.iso_utc``), a state name and a clock-event-reasons list are encoded once per
distinct value.

The text is exactly what ``json.dumps`` writes for the documents it replaces (the
GPUMetrics field names and order, DESIGN §5, and ``bucket_doc``'s): integers as integers,
floats by ``repr`` after the same rounding, None as ``null``. tests/test_bulk_documents.py
compares both, value by value, over rows with every field missing in turn.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from gpuhistory.clock import iso_utc
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.reading import clock_event_reason_names
from gpuhistory.domain.states import GPUState
from gpuhistory.storage.queries import GpuRow
from gpuhistory.storage.schema import samples

_S = samples.c
# The columns every sample answer reads, in the order the formatters unpack them.
SAMPLE_COLUMNS = (_S.ts_ms, _S.state, _S.utilization_pct, _S.memory_used_mib,
                  _S.memory_reserved_mib, _S.temperature_c, _S.memory_temperature_c,
                  _S.power_dw, _S.sm_clock_mhz, _S.mem_clock_mhz, _S.clock_event_reasons,
                  _S.pstate, _S.fan_pct)
TS, STATE, MEMORY_USED, POWER_DW, REASONS = 0, 1, 3, 7, 10  # positions used elsewhere
CSV_PIECE_ROWS = 500  # CSV rows per piece of a streamed download

SampleRow = Sequence[Any]


def json_text(value: Any) -> str:
    """One value as JSON text (the encoder of the answers around these rows)."""
    return orjson.dumps(value).decode()


def sample_statement(gpu_id: int, since_ms: int | None, until_ms: int | None,
                     newest_first: bool = False, source: Any = None) -> sa.Select[Any]:
    """SAMPLE_COLUMNS of one card in [since, until] by time (a primary-key range scan) from
    ``source``, a selectable with the columns of ``samples`` (default: the table; the
    readers pass ``storage.sample_source.raw_samples(conn)``, which adds the kept rows of
    dropped partitions on PostgreSQL)."""
    c = (samples if source is None else source).c
    query = sa.select(*(c[column.name] for column in SAMPLE_COLUMNS)).where(
        c.gpu_id == gpu_id)
    if since_ms is not None:
        query = query.where(c.ts_ms >= since_ms)
    if until_ms is not None:
        query = query.where(c.ts_ms <= until_ms)
    return query.order_by(c.ts_ms.desc() if newest_first else c.ts_ms)


_STATE_JSON = {int(s): json_text(s.name) for s in GPUState}
_STATE_NAME = {int(s): s.name for s in GPUState}


@functools.lru_cache(maxsize=1024)
def _reasons_json(mask: int | None) -> str:
    return json_text(clock_event_reason_names(mask))


@functools.lru_cache(maxsize=1024)
def _reasons_csv(mask: int | None) -> str:
    return "|".join(clock_event_reason_names(mask))


def metrics_json(gpu: GpuRow, rows: Sequence[SampleRow]) -> str:
    """The JSON array of the GPUMetrics documents of ``rows`` (SAMPLE_COLUMNS of ``gpu``)."""
    total = gpu.memory_total_mib
    head = (f'{{"gpu_id":{json_text(gpu.index)},"uuid":{json_text(gpu.uuid)},'
            f'"name":{json_text(gpu.name)},"timestamp":"')
    total_text = json_text(total)
    limit_text = json_text(gpu.power_limit_w)
    tail = f',"backend":{json_text(gpu.backend)}}}'
    iso = iso_utc
    states = _STATE_JSON
    reasons = _reasons_json
    out: list[str] = []
    append = out.append
    for (ts, state, util, used, reserved, temp, mem_temp, power, sm, mem_clock, mask,
         pstate, fan) in rows:
        if used is None or total is None:
            percent = free = "null"
        else:
            percent = repr(round(100.0 * used / total, 2)) if total else "null"
            free = max(0, total - (reserved or 0) - used)
        append(
            f'{head}{iso(ts)}","state":{states[state]},'
            f'"load_percent":{"null" if util is None else util},'
            f'"memory_used_mb":{"null" if used is None else used},'
            f'"memory_total_mb":{total_text},"memory_percent":{percent},'
            f'"memory_reserved_mb":{"null" if reserved is None else reserved},'
            f'"memory_free_mb":{free},"temperature_celsius":{"null" if temp is None else temp},'
            f'"memory_temperature_celsius":{"null" if mem_temp is None else mem_temp},'
            f'"power_watts":{"null" if power is None else repr(round(power / 10, 1))},'
            f'"power_limit_watts":{limit_text},'
            f'"sm_clock_mhz":{"null" if sm is None else sm},'
            f'"mem_clock_mhz":{"null" if mem_clock is None else mem_clock},'
            f'"clock_event_reasons":{reasons(mask)},'
            f'"clock_event_reasons_mask":{"null" if mask is None else mask},'
            f'"pstate":{"null" if pstate is None else pstate},'
            f'"fan_percent":{"null" if fan is None else fan}{tail}')
    return f"[{','.join(out)}]"


def metrics_docs(gpu: GpuRow, rows: Sequence[SampleRow]) -> list[dict[str, Any]]:
    """The GPUMetrics documents of ``rows`` as Python dicts (parsed from metrics_json)."""
    docs: list[dict[str, Any]] = orjson.loads(metrics_json(gpu, rows))
    return docs


CSV_HEADER = ",".join(GPUMetrics.__dataclass_fields__) + "\n"


def _csv_cell(value: Any) -> str:
    """One constant cell as the csv module writes it (quoted only where it must be)."""
    if value is None or value == "":
        return ""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([value])
    return buffer.getvalue()[:-1]


def metrics_csv(gpu: GpuRow, rows: Sequence[SampleRow]) -> Iterator[str]:
    """``rows`` as CSV with the GPUMetrics columns (reasons joined by ``|``), in pieces of
    CSV_PIECE_ROWS rows: the text ``csv.writer`` writes for the same documents."""
    total = gpu.memory_total_mib
    head = f"{gpu.index},{_csv_cell(gpu.uuid)},{_csv_cell(gpu.name)},"
    total_text = _csv_cell(total)
    limit_text = _csv_cell(gpu.power_limit_w)
    tail = f",{_csv_cell(gpu.backend)}\n"
    iso = iso_utc
    names = _STATE_NAME
    reasons = _reasons_csv
    yield CSV_HEADER
    for start in range(0, len(rows), CSV_PIECE_ROWS):
        out: list[str] = []
        append = out.append
        for (ts, state, util, used, reserved, temp, mem_temp, power, sm, mem_clock, mask,
             pstate, fan) in rows[start:start + CSV_PIECE_ROWS]:
            if used is None or total is None:
                percent = free = ""
            else:
                percent = repr(round(100.0 * used / total, 2)) if total else ""
                free = max(0, total - (reserved or 0) - used)
            append(
                f'{head}{iso(ts)},{names[state]},{"" if util is None else util},'
                f'{"" if used is None else used},{total_text},{percent},'
                f'{"" if reserved is None else reserved},{free},{"" if temp is None else temp},'
                f'{"" if mem_temp is None else mem_temp},'
                f'{"" if power is None else repr(round(power / 10, 1))},{limit_text},'
                f'{"" if sm is None else sm},{"" if mem_clock is None else mem_clock},'
                f'{reasons(mask)},{"" if mask is None else mask},'
                f'{"" if pstate is None else pstate},{"" if fan is None else fan}{tail}')
        yield "".join(out)


def _number(value: Any) -> str:
    """A min or max the database returned, as ``json.dumps`` writes it (an integer column's
    aggregate is an int; anything else, a Decimal say, is written as a float)."""
    return str(value) if isinstance(value, int) else repr(float(value))


def buckets_json(rows: Sequence[SampleRow]) -> str:
    """The JSON array of history buckets (``bucket_doc``'s fields) of aggregated rows."""
    iso = iso_utc
    states = _STATE_JSON
    reasons = _reasons_json
    out: list[str] = []
    append = out.append
    for (bucket, n, temp_n, temp_min, temp_max, temp_sum, mem_max, util_n, util_sum,
         power_n, power_sum, power_max, mask, state_max) in rows:
        mask = None if mask is None else int(mask)
        temp_avg = repr(round(float(temp_sum) / int(temp_n), 2)) if temp_n else "null"
        load = repr(round(float(util_sum) / int(util_n), 2)) if util_n else "null"
        power_avg = (repr(round(float(power_sum) / int(power_n) / 10, 2)) if power_n
                     else "null")
        # Integer columns' min and max are ints, or NULL; anything else goes by _number.
        if type(temp_min) is not int:
            temp_min = "null" if temp_min is None else _number(temp_min)
        if type(temp_max) is not int:
            temp_max = "null" if temp_max is None else _number(temp_max)
        if type(mem_max) is not int:
            mem_max = "null" if mem_max is None else _number(mem_max)
        append(
            f'{{"timestamp":"{iso(int(bucket))}","samples":{int(n)},'
            f'"temperature_min":{temp_min},"temperature_max":{temp_max},'
            f'"temperature_avg":{temp_avg},"memory_used_max_mb":{mem_max},'
            f'"load_avg":{load},"power_avg_watts":{power_avg},'
            f'"power_max_watts":{"null" if power_max is None else repr(float(power_max) / 10)},'
            f'"clock_event_reasons":{reasons(mask)},'
            f'"clock_event_reasons_mask":{"null" if mask is None else mask},'
            f'"state":{states[int(state_max)]}}}')
    return f"[{','.join(out)}]"
