"""``import`` of trace files: the live classification path, one transaction, clean failures.

Expected states, transitions and events are worked out here from the CSV with the csv module
and the thresholds of DESIGN §3 — independent code, not the importer's.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory import importer
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.domain.states import GPUState
from gpuhistory.formats.errors import FormatError
from gpuhistory.formats.trace_csv import read_trace
from gpuhistory.importer import ImportConflictError, ImportResult, import_file
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.storage.log import LogStore
from gpuhistory.storage.schema import events, gpus, metadata, samples, transitions
from tests.conftest import FLEET4, H100_BURN

pytestmark = pytest.mark.postgres

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the wall-clock time of t_s = 0
HOST = "importhost"
S = GPUState


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (alembic_version included), to prove nothing changed."""
    with engine.connect() as conn:
        names = sorted(sa.inspect(conn).get_table_names())
        return {name: sorted(tuple(row) for row in
                             conn.execute(sa.text(f"SELECT * FROM {name}")))
                for name in names}


def csv_rows(path: Path, gpu: int | None = None) -> list[dict[str, Any]]:
    """The trace through the csv module: t_s, ts_ms, gpu, temperature, memory %."""
    out = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if gpu is not None and int(row["gpu"]) != gpu:
                continue
            out.append({
                "ts_ms": START_MS + round(float(row["t_s"]) * 1000),
                "gpu": int(row["gpu"]),
                "temp": int(row["temperature_c"]),
                "mem_pct": 100 * int(row["memory_used_mib"]) / int(row["memory_total_mib"]),
            })
    return out


def rows_of(engine: sa.Engine, query: sa.Select[Any]) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(query))


def gpu_id_of(engine: sa.Engine, index: int) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(gpus.c.id).where(gpus.c.host == HOST,
                                                       gpus.c.gpu_index == index)).scalar_one()


def event_list(engine: sa.Engine, gpu_id: int) -> list[tuple[int, str, dict[str, Any]]]:
    e = events.c
    return [(r.ts_ms, r.kind, r.payload) for r in rows_of(
        engine, sa.select(e.ts_ms, e.kind, e.payload).where(e.gpu_id == gpu_id)
        .order_by(e.id))]


def transition_list(engine: sa.Engine, gpu_id: int) -> list[tuple[int, int | None, int, str]]:
    t = transitions.c
    return [tuple(r) for r in rows_of(  # type: ignore[misc]
        engine, sa.select(t.ts_ms, t.from_state, t.to_state, t.cause)
        .where(t.gpu_id == gpu_id).order_by(t.id))]


def first_index(rows: list[dict[str, Any]], test: Any, start: int = 0) -> int:
    return next(i for i in range(start, len(rows)) if test(rows[i]))


# -- h100_burn under the default thresholds -----------------------------------------------


def test_h100_burn_import_matches_hand_computation(engine: sa.Engine) -> None:
    """Under the default thresholds the H100 never leaves OPTIMAL by temperature (peak 63 °C
    < 65) but memory reaches 77 %: NORMAL from the first row at ≥ 70 % until the first later
    row below 68 % (the 2 % hysteresis). Samples, states, transitions and their causes and
    times all match that, worked out from the CSV."""
    rows = csv_rows(H100_BURN)
    assert max(r["temp"] for r in rows) == 63 < DEFAULT_CONFIG.temp_optimal
    assert 77 < max(r["mem_pct"] for r in rows) < DEFAULT_CONFIG.memory_normal
    up = first_index(rows, lambda r: r["mem_pct"] >= 70)
    down = first_index(rows, lambda r: r["mem_pct"] < 68, start=up)
    assert all(r["mem_pct"] >= 68 for r in rows[up:down])  # no flapping in between

    result = import_file(engine, H100_BURN, start_ms=START_MS, host=HOST)

    assert isinstance(result, ImportResult)
    assert (result.format, result.samples, result.gpus) == ("trace", len(rows), 1)
    assert (result.transitions, result.events) == (3, 3)
    assert (result.first_ts_ms, result.last_ts_ms) == (rows[0]["ts_ms"], rows[-1]["ts_ms"])
    assert result.path == str(H100_BURN) and result.seconds > 0

    gpu = gpu_id_of(engine, 0)
    s = samples.c
    stored = rows_of(engine, sa.select(s.ts_ms, s.state, s.temperature_c)
                     .where(s.gpu_id == gpu).order_by(s.ts_ms))
    assert [r.ts_ms for r in stored] == [r["ts_ms"] for r in rows]
    assert [r.temperature_c for r in stored] == [r["temp"] for r in rows]
    expected_states = [S.NORMAL if up <= i < down else S.OPTIMAL for i in range(len(rows))]
    assert [r.state for r in stored] == expected_states

    assert transition_list(engine, gpu) == [
        (rows[0]["ts_ms"], None, S.OPTIMAL, "temperature"),
        (rows[up]["ts_ms"], S.OPTIMAL, S.NORMAL, "memory"),
        (rows[down]["ts_ms"], S.NORMAL, S.OPTIMAL, "memory"),
    ]
    evs = event_list(engine, gpu)
    assert [(ts, kind) for ts, kind, _ in evs] == [
        (rows[0]["ts_ms"], "state_change"), (rows[up]["ts_ms"], "state_change"),
        (rows[down]["ts_ms"], "state_change")]
    assert evs[1][2]["memory_percent"] == round(rows[up]["mem_pct"], 2)
    assert (evs[1][2]["from"], evs[1][2]["to"], evs[1][2]["cause"]) == \
        ("OPTIMAL", "NORMAL", "memory")


def test_sample_values_are_the_files(engine: sa.Engine) -> None:
    """Every column of every stored sample is the file's value (power as deciwatts)."""
    import_file(engine, H100_BURN, start_ms=START_MS, host=HOST)
    with open(H100_BURN, newline="") as handle:
        expected = [
            (START_MS + round(float(r["t_s"]) * 1000), int(r["temperature_c"]),
             int(r["memory_temperature_c"]), int(r["memory_used_mib"]),
             int(r["utilization_pct"]), round(float(r["power_w"]) * 10),
             int(r["sm_clock_mhz"]), int(r["mem_clock_mhz"]), int(r["clock_event_reasons"]),
             int(r["pstate"]), None)
            for r in csv.DictReader(handle)]
    s = samples.c
    stored = rows_of(engine, sa.select(
        s.ts_ms, s.temperature_c, s.memory_temperature_c, s.memory_used_mib,
        s.utilization_pct, s.power_dw, s.sm_clock_mhz, s.mem_clock_mhz,
        s.clock_event_reasons, s.pstate, s.fan_pct).order_by(s.ts_ms))
    assert [tuple(r) for r in stored] == expected


def test_gpus_row_spans_the_file(engine: sa.Engine) -> None:
    """The imported GPU's row says backend ``trace``, a uuid naming the file, its total
    memory, and first/last seen equal to the first and last sample."""
    result = import_file(engine, H100_BURN, start_ms=START_MS, host=HOST)
    (row,) = rows_of(engine, sa.select(gpus))
    assert (row.host, row.gpu_index, row.uuid, row.backend, row.memory_total_mib) == \
        (HOST, 0, "GPU-trace-h100_burn-0", "trace", 81559)
    assert (row.first_seen_ms, row.last_seen_ms) == (result.first_ts_ms, result.last_ts_ms)


# -- fleet4_derived ------------------------------------------------------------------------


def rises(rows: list[dict[str, Any]], up: float, band: float = 2) -> list[tuple[int, int]]:
    """(row where the temperature reaches ``up``, first later row below ``up - band``) for
    each rise through ``up`` after having been below ``up - band``; -1 if it never falls."""
    out, armed = [], True
    for i, r in enumerate(rows):
        if armed and r["temp"] >= up:
            out.append([i, -1])
            armed = False
        elif not armed and r["temp"] < up - band:
            out[-1][1] = i
            armed = True
    return [(a, b) for a, b in out]


def test_fleet4_gpu1_overheats_to_critical_and_recovers(engine: sa.Engine) -> None:
    """GPU 1 of the fleet trace peaks at 90 °C: THROTTLED with a ``throttle`` event at the
    first row ≥ 75 °C; CRITICAL with ``critical`` and ``overheat`` events at the first row
    ≥ 85 °C (and again each time it climbs back through 85 °C after dipping below 83 °C);
    back down to THROTTLED at each such dip; and it ends the file cooled, not CRITICAL."""
    rows = csv_rows(FLEET4, gpu=1)
    assert max(r["temp"] for r in rows) == 90
    assert max(r["mem_pct"] for r in rows) < DEFAULT_CONFIG.memory_normal
    hot = first_index(rows, lambda r: r["temp"] >= 75)
    critical = first_index(rows, lambda r: r["temp"] >= 85)
    runs = rises(rows, 85)
    assert runs[0][0] == critical and all(end > 0 for _, end in runs)
    assert all(rows[end]["temp"] >= 73 for _, end in runs)  # so each dip is to THROTTLED

    result = import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    assert (result.gpus, result.samples) == (4, len(csv_rows(FLEET4)))

    gpu = gpu_id_of(engine, 1)
    evs = event_list(engine, gpu)
    at = {kind: [ts for ts, k, _ in evs if k == kind] for kind in
          ("throttle", "critical", "overheat", "resume")}
    assert at["throttle"][0] == rows[hot]["ts_ms"]
    assert at["overheat"] == at["critical"] == [rows[start]["ts_ms"] for start, _ in runs]
    assert at["overheat"][0] == rows[critical]["ts_ms"]
    overheat = next(p for _, kind, p in evs if kind == "overheat")
    assert overheat == {"temperature_celsius": rows[critical]["temp"], "threshold_celsius": 85}

    trans = transition_list(engine, gpu)
    assert trans[0][:3] == (rows[0]["ts_ms"], None, S.OPTIMAL)
    assert (rows[hot]["ts_ms"], S.NORMAL, S.THROTTLED, "temperature") in trans
    assert [t for t in trans if t[2] == S.CRITICAL] == [
        (rows[start]["ts_ms"], S.THROTTLED, S.CRITICAL, "temperature") for start, _ in runs]
    assert [t for t in trans if t[1] == S.CRITICAL] == [
        (rows[end]["ts_ms"], S.CRITICAL, S.THROTTLED, "temperature") for _, end in runs]
    assert trans[-1][2] < S.THROTTLED
    # Throttle advice stays CRITICAL for critical_pause_seconds (60) after leaving
    # CRITICAL; the file ends inside that pause, so no ``resume`` yet.
    pause_end = rows[runs[-1][1]]["ts_ms"] + 60_000
    assert rows[-1]["ts_ms"] < pause_end and at["resume"] == []


def test_resume_comes_when_the_critical_pause_ends(engine: sa.Engine, tmp_path: Path) -> None:
    """Extend the fleet trace's GPU 1 by 40 s of cool rows: ``resume`` comes at the first
    row at or after 60 s (critical_pause_seconds) past its last step down from CRITICAL."""
    rows = csv_rows(FLEET4, gpu=1)
    last_leave = rows[rises(rows, 85)[-1][1]]["ts_ms"]
    tail = FLEET4.read_text().splitlines()[-3]  # GPU 1's last row
    assert tail.split(",")[1] == "1"
    cells = tail.split(",")
    extra = [",".join([f"{260 + k / 10:.3f}", *cells[1:]]) for k in range(1, 401)]
    path = tmp_path / "longer.csv"
    path.write_text(FLEET4.read_text() + "\n".join(extra) + "\n")
    import_file(engine, path, start_ms=START_MS, host=HOST)
    extra_ts = [START_MS + round((260 + k / 10) * 1000) for k in range(1, 401)]
    expected = next(ts for ts in extra_ts if ts >= last_leave + 60_000)
    resumes = [(ts, p) for ts, kind, p in event_list(engine, gpu_id_of(engine, 1))
               if kind == "resume"]
    assert [ts for ts, _ in resumes] == [expected]
    assert resumes[0][1]["effective_state"] in ("OPTIMAL", "NORMAL")


def test_fleet4_gpu3_stays_optimal(engine: sa.Engine) -> None:
    """GPU 3 idles throughout: every sample OPTIMAL, one transition (to OPTIMAL at the
    start) and no event beyond that state_change."""
    rows = csv_rows(FLEET4, gpu=3)
    assert max(r["temp"] for r in rows) < 65 and max(r["mem_pct"] for r in rows) < 70
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    gpu = gpu_id_of(engine, 3)
    s = samples.c
    states = [r.state for r in rows_of(engine, sa.select(s.state).where(s.gpu_id == gpu))]
    assert len(states) == len(rows) and set(states) == {S.OPTIMAL}
    assert transition_list(engine, gpu) == [(rows[0]["ts_ms"], None, S.OPTIMAL, "temperature")]
    assert [kind for _, kind, _ in event_list(engine, gpu)] == ["state_change"]


def test_import_writes_what_the_live_path_writes(engine: sa.Engine, tmp_path: Path) -> None:
    """Feeding the same readings tick by tick through a live Pipeline and LogStore (one
    transaction per tick) gives the same samples, transitions and events as the import."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)

    from gpuhistory.storage.engine import make_engine, upgrade
    live_engine = make_engine(tmp_path / "live.db")
    upgrade(live_engine)
    store = LogStore(live_engine, HOST)
    pipeline = Pipeline(store, backend_name="trace", config=lambda: DEFAULT_CONFIG,
                        fill_missing=False)
    ticks: dict[float, list[Any]] = {}
    for row in read_trace(FLEET4):
        ticks.setdefault(row.t_s, []).append(row.reading)
    for t_s, readings in ticks.items():
        store.write(pipeline.process(START_MS + round(t_s * 1000), readings))

    def content(eng: sa.Engine) -> tuple[list[Any], ...]:
        with eng.connect() as conn:
            t, e = transitions.c, events.c
            return (
                sorted(tuple(r) for r in conn.execute(sa.select(samples))),
                sorted(tuple(r) for r in conn.execute(sa.select(
                    t.gpu_id, t.ts_ms, t.from_state, t.to_state, t.cause, t.temperature_c,
                    t.memory_percent))),
                sorted((r.gpu_id, r.ts_ms, r.kind, sorted(r.payload.items(), key=str))
                       for r in conn.execute(sa.select(e.gpu_id, e.ts_ms, e.kind, e.payload))),
            )
    try:
        assert content(engine) == content(live_engine)
        assert [s for s in content(engine)[0] if s[2] == S.CRITICAL]
    finally:
        live_engine.dispose()


def test_lowered_thresholds_give_overheat_events(engine: sa.Engine) -> None:
    """With temp_throttle lowered to 55 °C the H100's 63 °C load is an overheat: one
    ``overheat`` (and ``critical``) event each time the temperature rises through 55 °C
    after having been below 53 °C (the hysteresis), the first at the first row ≥ 55 °C."""
    config = Config(temp_optimal=35, temp_normal=45, temp_throttle=55, temp_critical=60)
    rows = csv_rows(H100_BURN)
    expected = [rows[start]["ts_ms"] for start, _ in rises(rows, 55)]
    assert expected and expected[0] == rows[first_index(rows, lambda r: r["temp"] >= 55)]["ts_ms"]

    result = import_file(engine, H100_BURN, start_ms=START_MS, host=HOST, config=config)
    evs = event_list(engine, gpu_id_of(engine, 0))
    assert [ts for ts, kind, _ in evs if kind == "overheat"] == expected
    assert [ts for ts, kind, _ in evs if kind == "critical"] == expected
    assert {p["threshold_celsius"] for _, kind, p in evs if kind == "overheat"} == {55}
    assert result.events == len(evs)


def test_start_ms_places_the_trace(engine: sa.Engine) -> None:
    """The same trace imported at two start times lands at two places in time, without
    clashing, under the same gpus row whose first/last seen then span both."""
    first = import_file(engine, H100_BURN, start_ms=START_MS, host=HOST)
    later = import_file(engine, H100_BURN, start_ms=START_MS + 86_400_000, host=HOST)
    assert later.first_ts_ms == first.first_ts_ms + 86_400_000
    (row,) = rows_of(engine, sa.select(gpus))
    assert (row.first_seen_ms, row.last_seen_ms) == (first.first_ts_ms, later.last_ts_ms)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(samples)).scalar() == \
            2 * first.samples


# -- failures leave the database as it was ------------------------------------------------


def test_trace_import_needs_start_ms(engine: sa.Engine) -> None:
    """A trace holds only relative times, so importing one without start_ms is refused
    with a message saying what start_ms is, before anything is written."""
    before = snapshot(engine)
    with pytest.raises(ValueError, match="needs start_ms, the wall-clock time of t_s = 0"):
        import_file(engine, H100_BURN, host=HOST)
    with pytest.raises(ValueError, match="start_ms must be epoch milliseconds"):
        import_file(engine, H100_BURN, host=HOST, start_ms=-5)
    with pytest.raises(ValueError, match="unknown import format"):
        import_file(engine, H100_BURN, host=HOST, start_ms=START_MS, fmt="xml")
    assert snapshot(engine) == before


def test_reimport_fails_cleanly(engine: sa.Engine) -> None:
    """Importing the same file again clashes on the samples' primary key: a clear
    ImportConflictError, and the database exactly as the first import left it."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    before = snapshot(engine)
    with pytest.raises(ImportConflictError, match="was it imported before") as info:
        import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    assert "Nothing was imported" in str(info.value)
    assert snapshot(engine) == before


GOOD = H100_BURN.read_text().splitlines()


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("\n".join(GOOD[:500]) + "\n" + GOOD[500][:17], 501, "expected 12 cells"),
        ("\n".join([*GOOD[:300], GOOD[300] + ",7", *GOOD[301:]]), 301, "expected 12 cells"),
        ("\n".join([*GOOD[:900], GOOD[900].replace(",0,", ",zero,", 1), *GOOD[901:]]), 901,
         "is not a number"),
        (("\n".join(GOOD[:1200]) + "\n").encode() + bytes(range(128, 256)) * 4, 1201, "not UTF-8"),
        (b"", 1, "empty file"),
        ("when,which,temperature_c\n1,0,30\n", 1, "unrecognised header"),
        ("t_s,temperature_c\n0.0,30\n", 1, "header lacks required column(s) ['gpu']"),
        (GOOD[0] + "\n", 2, "no data rows"),
    ],
    ids=["truncated", "extra-cell", "non-numeric", "binary", "empty", "unknown-header",
         "missing-column", "header-only"],
)
@pytest.mark.parametrize("prior", [False, True], ids=["fresh-db", "after-an-import"])
def test_bad_file_changes_nothing(engine: sa.Engine, tmp_path: Path, content: str | bytes,
                                  line: int, message: str, prior: bool) -> None:
    """A bad file anywhere — even after rows were classified and written — is a
    FormatError naming its line, and every table is exactly as before (no gpus row)."""
    if prior:
        import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    before = snapshot(engine)
    path = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(FormatError) as info:
        import_file(engine, path, start_ms=START_MS, host=HOST)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert message in info.value.message
    assert snapshot(engine) == before
    if not prior:
        assert before["gpus"] == [] and before["samples"] == []


def test_error_after_chunks_were_written_rolls_everything_back(
        engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With small write chunks, thousands of samples, transitions, events and four gpus
    rows are written before a bad last line is read; all of it is rolled back."""
    monkeypatch.setattr(importer, "CHUNK_SAMPLES", 500)
    path = tmp_path / "fleet.csv"
    path.write_text(FLEET4.read_text() + "260.2,0,31,33\n")
    before = snapshot(engine)
    with pytest.raises(FormatError, match="expected 12 cells, found 4"):
        import_file(engine, path, start_ms=START_MS, host=HOST)
    assert snapshot(engine) == before


def test_duplicate_gpu_at_one_time_is_an_error(engine: sa.Engine, tmp_path: Path) -> None:
    """Two rows of the same GPU at the same t_s cannot both be samples: a FormatError
    naming the second row, rather than one of them silently dropped."""
    lines = [*GOOD[:4], GOOD[3], *GOOD[4:10]]
    path = tmp_path / "dup.csv"
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(engine)
    with pytest.raises(FormatError, match=r":5: GPU 0 has a second row for the same time "
                                          r"\(first at line 4\)"):
        import_file(engine, path, start_ms=START_MS, host=HOST)
    assert snapshot(engine) == before


def test_every_table_is_covered_by_the_snapshot(engine: sa.Engine) -> None:
    """The unchanged-database checks above compare every table the schema defines."""
    assert set(metadata.tables) <= set(snapshot(engine))


def test_times_beyond_year_9999_are_refused(engine: sa.Engine, tmp_path: Path) -> None:
    """A t_s that would stamp a sample past the year 9999 is a FormatError naming its row,
    not an integer overflow in the database."""
    path = tmp_path / "far.csv"
    path.write_text("\n".join([*GOOD[:3], GOOD[3].replace("0.200", "999999999999", 1)]) + "\n")
    before = snapshot(engine)
    with pytest.raises(FormatError, match=r":4: the row's time .* outside the years"):
        import_file(engine, path, start_ms=START_MS, host=HOST)
    assert snapshot(engine) == before
