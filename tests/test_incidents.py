"""Overheat incidents: detection over imported and live samples, the API, the CLI.

Expected incidents are worked out here from the trace CSVs with the csv module and a
sample-by-sample state machine (open at ``>= temp_throttle``, close below
``temp_throttle - hysteresis_c`` or at a data gap, reopen within the merge window) —
independent code, not the detector's gaps-and-islands SQL.
"""

from __future__ import annotations

import bisect
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.analytics import incidents as incidents_module
from gpuhistory.analytics.incidents import IncidentDetector, mark_dirty
from gpuhistory.cli.main import cli
from gpuhistory.clock import FakeClock, iso_utc
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.importer import import_file
from gpuhistory.storage.schema import gpus, incidents, samples
from tests.conftest import FLEET4, H100_BURN

pytestmark = pytest.mark.postgres

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: FakeClock's start, t_s = 0 of imports
HOST = "testhost"
HOUR_MS = 3_600_000
GAP_MS = 60_000  # the detector's data gap at the default 3 s interval
# Thresholds low enough for the real H100 (peak 63 °C) to overheat.
LOW = {"temp_optimal": 40, "temp_normal": 50, "temp_throttle": 61, "temp_critical": 62}


# -- the independent expectation -----------------------------------------------------------
@dataclass
class Row:
    ts: int
    temp: int | None
    power_dw: int | None = None
    reasons: int | None = None


def trace_rows(path: Path, gpu: int, start_ms: int = START_MS) -> list[Row]:
    """One GPU of a trace through the csv module, stamped as an import stamps it."""
    out = []
    with open(path, newline="") as handle:
        for r in csv.DictReader(handle):
            if int(r["gpu"]) != gpu:
                continue
            temp = r.get("temperature_c") or None
            power = r.get("power_w") or None
            reasons = r.get("clock_event_reasons") or None
            out.append(Row(start_ms + round(float(r["t_s"]) * 1000),
                           None if temp is None else int(temp),
                           None if power is None else round(float(power) * 10),
                           None if reasons is None else int(reasons)))
    return out


def sampled_rows(path: Path, gpu: int, seconds: int) -> list[Row]:
    """What the sim sampler stores ticking at 1 s: the trace row at or before each second."""
    rows = trace_rows(path, gpu, 0)
    times = [r.ts for r in rows]
    out = []
    for t in range(seconds + 1):
        r = rows[bisect.bisect_right(times, t * 1000) - 1]
        out.append(Row(START_MS + t * 1000, r.temp, r.power_dw, r.reasons))
    return out


def expected(rows: list[Row], config: Config = DEFAULT_CONFIG,
             now_ms: int = START_MS + 30 * 86_400_000) -> list[dict[str, Any]]:
    """Incidents by a state machine over the samples, with their figures."""
    high, low = config.temp_throttle, config.temp_throttle - config.hysteresis_c
    merge = round(config.incident_merge_seconds * 1000)
    hot = [r for r in rows if r.temp is not None]
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    previous: int | None = None
    for r in hot:
        if current is not None and current["end"] is None:
            if r.ts - previous > GAP_MS:  # type: ignore[operator]
                current["end"] = previous
            elif r.temp < low:  # type: ignore[operator]
                current["end"] = r.ts
            else:
                current["last"] = r.ts
        if (current is None or current["end"] is not None) and r.temp >= high:  # type: ignore[operator]
            if found and r.ts - found[-1]["end"] < merge:
                current = found[-1]
                current.update(end=None, last=r.ts)
            else:
                current = {"start": r.ts, "last": r.ts, "end": None}
                found.append(current)
        previous = r.ts
    if current is not None and current["end"] is None and now_ms - current["last"] > GAP_MS:
        current["end"] = current["last"]
    for inc in found:
        during = [r for r in hot if inc["start"] <= r.ts <= inc["last"]]
        peak = max(r.temp for r in during)  # type: ignore[type-var]
        above = 0
        for i, r in enumerate(hot):
            hotter = r.temp > config.temp_critical  # type: ignore[operator]
            if inc["start"] <= r.ts <= inc["last"] and hotter and i + 1 < len(hot):
                above += min(hot[i + 1].ts - r.ts, GAP_MS)
        reasons = 0
        for r in rows:
            if inc["start"] <= r.ts <= inc["last"] and r.reasons:
                reasons |= r.reasons
        inc.update(
            peak=peak, peak_ms=min(r.ts for r in during if r.temp == peak),
            n=len(during), sum=sum(r.temp for r in during),  # type: ignore[misc]
            above_critical_ms=above, reasons=reasons,
            peak_power_dw=max((r.power_dw for r in during if r.power_dw is not None),
                              default=None),
            severity="severe" if peak > config.temp_critical else "overheat")  # type: ignore[operator]
    return found


# -- helpers ---------------------------------------------------------------------------------
def gpu_row_id(engine: sa.Engine, index: int, uuid_part: str, host: str = HOST) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(gpus.c.id).where(
            gpus.c.host == host, gpus.c.gpu_index == index,
            gpus.c.uuid.contains(uuid_part))).scalar_one()


def stored(engine: sa.Engine, gpu_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(incidents).where(incidents.c.gpu_id == gpu_id)
                                 .order_by(incidents.c.start_ms)))


def assert_matches(rows: list[Any], want: list[dict[str, Any]]) -> None:
    got = [(r.start_ms, r.end_ms, r.peak_temp_c, r.peak_ms, r.temp_n, r.temp_sum,
            r.above_critical_ms, r.clock_event_reasons, r.peak_power_dw, r.severity)
           for r in rows]
    assert got == [(w["start"], w["end"], w["peak"], w["peak_ms"], w["n"], w["sum"],
                    w["above_critical_ms"], w["reasons"], w["peak_power_dw"], w["severity"])
                   for w in want]


def write_trace(path: Path, temps: list[int | None], step_s: float = 1.0,
                reasons: int = 0x4) -> Path:
    """A one-GPU trace at ``step_s`` with these temperatures (None: not reported)."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["t_s", "gpu", "temperature_c", "power_w", "memory_used_mib",
                      "memory_total_mib", "clock_event_reasons"])
        for i, temp in enumerate(temps):
            out.writerow([f"{i * step_s:.3f}", 0, "" if temp is None else temp, 500.0,
                          1000, 80000, reasons])
    return path


def api(app, path: str, **params: Any) -> Any:
    response = requests.get(f"{app.url}{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# -- detection over imported traces -----------------------------------------------------------

def load(engine: sa.Engine, path: Path, **kwargs: Any) -> None:
    """Import a file, then undo its incident scan: the samples wait for a detector run
    (the state the detector tests start from)."""
    import_file(engine, path, **kwargs)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM incidents"))
        conn.execute(sa.text("DELETE FROM incident_progress"))


def test_fleet4_gpu1_overheats_twice_and_the_other_gpus_never(engine: sa.Engine) -> None:
    """Under the default thresholds GPU 1 of fleet4 has two incidents — one 81 °C sample at
    t = 90.3 s drops below 85 - 2 and closes the first, 31 s before the second — peaking at
    86 and 90 °C. 90 is not above temp_critical (90), so neither is severe. GPUs 0, 2, 3:
    none."""
    load(engine, FLEET4, start_ms=START_MS, host=HOST)
    result = IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), DEFAULT_CONFIG).run()
    assert result.inserted == 2 and result.conflicts == 0
    want = expected(trace_rows(FLEET4, 1))
    assert [(w["start"] - START_MS, w["end"] - START_MS, w["peak"]) for w in want] == [
        (42_700, 90_300, 86), (121_500, 200_200, 90)]
    assert_matches(stored(engine, gpu_row_id(engine, 1, "fleet4")), want)
    for index in (0, 2, 3):
        assert stored(engine, gpu_row_id(engine, index, "fleet4")) == []
    second = stored(engine, gpu_row_id(engine, 1, "fleet4"))[1]
    assert second.severity == "overheat" and second.above_critical_ms == 0
    assert (second.temp_throttle, second.hysteresis_c, second.temp_critical) == (85, 2, 90)


def test_rebuild_applies_new_thresholds_and_keeps_ids(engine: sa.Engine) -> None:
    """A lower temp_critical changes no stored incident by itself (no new samples);
    ``rebuild`` keeps both rows (same ids, same starts) and makes the 90 °C one severe. A
    longer merge window then folds both into one incident, which keeps the first one's id."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    clock = FakeClock(START_MS + HOUR_MS)
    IncidentDetector(engine, clock, DEFAULT_CONFIG).run()
    gpu = gpu_row_id(engine, 1, "fleet4")
    before = stored(engine, gpu)

    severe = DEFAULT_CONFIG.changed(temp_critical=89)
    assert IncidentDetector(engine, clock, severe).run().updated == 0
    assert stored(engine, gpu) == before
    IncidentDetector(engine, clock, severe).rebuild()
    after = stored(engine, gpu)
    assert [r.id for r in after] == [r.id for r in before]
    assert_matches(after, expected(trace_rows(FLEET4, 1), severe))
    assert [r.severity for r in after] == ["overheat", "severe"]
    assert after[1].above_critical_ms > 0 and after[1].temp_critical == 89

    merged = DEFAULT_CONFIG.changed(incident_merge_seconds=40)
    result = IncidentDetector(engine, clock, merged).rebuild()
    assert result.deleted == 1
    one = stored(engine, gpu)
    assert_matches(one, expected(trace_rows(FLEET4, 1), merged))
    assert len(one) == 1 and one[0].id == before[0].id
    assert (one[0].start_ms - START_MS, one[0].end_ms - START_MS, one[0].peak_temp_c) == (
        42_700, 200_200, 90)


def test_changed_thresholds_apply_from_the_stretch_being_scanned(engine: sa.Engine,
                                                                 tmp_path: Path) -> None:
    """An incident that closed long before keeps the thresholds it was found with. A card
    that sat at 82 °C (no incident at 85) when temp_throttle drops to 80 gets an incident
    from its first sample at 82, not from where the scan would otherwise resume."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = [70] * 10 + [88] * 10 + [70] * 300 + [82] * 300  # 88 °C at 10-19 s; 82 from 320 s
    load(engine, write_trace(tmp_path / "a" / "card.csv", first), start_ms=START_MS,
                host=HOST)
    clock = FakeClock(START_MS + HOUR_MS)
    IncidentDetector(engine, clock, DEFAULT_CONFIG).run()
    gpu = gpu_row_id(engine, 0, "card")
    [old] = stored(engine, gpu)
    assert (old.start_ms - START_MS, old.end_ms - START_MS, old.severity) == (
        10_000, 20_000, "overheat")

    lower = DEFAULT_CONFIG.changed(temp_throttle=80, temp_critical=87)
    rest = [82] * 30 + [70] * 10  # the same card, continuing at 620 s
    import_file(engine, write_trace(tmp_path / "b" / "card.csv", rest),
                start_ms=START_MS + 620_000, host=HOST, config=lower, clock=clock)
    IncidentDetector(engine, clock, lower).run()
    kept, new = stored(engine, gpu)
    assert kept == old  # untouched: it closed long before the stretch rescanned
    assert (new.start_ms - START_MS, new.end_ms - START_MS, new.temp_throttle) == (
        320_000, 650_000, 80)
    rows = trace_rows(tmp_path / "a" / "card.csv", 0) + trace_rows(
        tmp_path / "b" / "card.csv", 0, START_MS + 620_000)
    IncidentDetector(engine, clock, lower).rebuild()
    assert_matches(stored(engine, gpu), expected(rows, lower))
    assert stored(engine, gpu)[0].id == old.id and stored(engine, gpu)[0].severity == "severe"


def test_redetection_is_stable(engine: sa.Engine) -> None:
    """Running again, marking the range dirty, or rebuilding changes no row and no id."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    detector = IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), DEFAULT_CONFIG)
    detector.run()
    gpu = gpu_row_id(engine, 1, "fleet4")
    first = stored(engine, gpu)
    again = detector.run()
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    with engine.begin() as conn:
        mark_dirty(conn, gpu, START_MS)
    dirty = detector.run()
    assert (dirty.inserted, dirty.updated, dirty.deleted) == (0, 0, 0)
    rebuilt = detector.rebuild()
    assert (rebuilt.inserted, rebuilt.updated, rebuilt.deleted) == (0, 0, 0)
    assert stored(engine, gpu) == first


def test_scanning_in_small_chunks_finds_the_same_incidents(engine: sa.Engine) -> None:
    """A long log is scanned in chunks (here 97 samples); the result equals one scan."""
    config = Config(**LOW, hysteresis_c=0, incident_merge_seconds=0)
    load(engine, H100_BURN, start_ms=START_MS, host=HOST)
    clock = FakeClock(START_MS + HOUR_MS)
    IncidentDetector(engine, clock, config, chunk_samples=97).run()
    gpu = gpu_row_id(engine, 0, "h100")
    assert_matches(stored(engine, gpu), expected(trace_rows(H100_BURN, 0), config))
    assert len(stored(engine, gpu)) == 17


def test_hysteresis_makes_a_card_hovering_at_the_threshold_one_incident(
        engine: sa.Engine) -> None:
    """The real H100 hovers at 59-61 °C under load: at temp_throttle 60 with no hysteresis
    and no merging that is 87 incidents; with the 2 °C hysteresis it is one."""
    import_file(engine, H100_BURN, start_ms=START_MS, host=HOST)
    clock = FakeClock(START_MS + HOUR_MS)
    gpu = gpu_row_id(engine, 0, "h100")
    bare = Config(**{**LOW, "temp_throttle": 60}, hysteresis_c=0, incident_merge_seconds=0)
    IncidentDetector(engine, clock, bare).rebuild()
    want = expected(trace_rows(H100_BURN, 0), bare)
    assert len(want) == 87
    assert_matches(stored(engine, gpu), want)
    banded = bare.changed(hysteresis_c=2)
    IncidentDetector(engine, clock, banded).rebuild()
    want = expected(trace_rows(H100_BURN, 0), banded)
    assert len(want) == 1
    assert_matches(stored(engine, gpu), want)


def test_a_synthetic_card_oscillating_around_85_is_one_incident(engine: sa.Engine,
                                                                tmp_path: Path) -> None:
    """84, 86, 84, 86 ... for a minute: one incident (84 never drops below 83)."""
    temps = [70] * 10 + [84, 86] * 30 + [70] * 10
    import_file(engine, write_trace(tmp_path / "osc.csv", temps), start_ms=START_MS,
                host=HOST)
    IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), DEFAULT_CONFIG).run()
    rows = stored(engine, gpu_row_id(engine, 0, "osc"))
    assert [(r.start_ms - START_MS, r.end_ms - START_MS) for r in rows] == [(11_000, 70_000)]


def test_runs_closer_than_the_merge_window_are_one_incident(engine: sa.Engine,
                                                            tmp_path: Path) -> None:
    """Hot runs 9 s apart merge; 11 s apart they stay two (incident_merge_seconds 10)."""
    temps = ([70] * 5 + [88] * 5 + [70] * 9 + [88] * 5  # cools at 10 s, hot again at 19 s
             + [70] * 11 + [88] * 5 + [70] * 5)  # cools at 24 s, hot again at 35 s
    load(engine, write_trace(tmp_path / "runs.csv", temps), start_ms=START_MS,
                host=HOST)
    IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), DEFAULT_CONFIG).run()
    rows = stored(engine, gpu_row_id(engine, 0, "runs"))
    assert [(r.start_ms - START_MS, r.end_ms - START_MS) for r in rows] == [
        (5_000, 24_000), (35_000, 40_000)]
    want = expected(trace_rows(tmp_path / "runs.csv", 0))
    assert_matches(rows, want)
    real = Config(**{**LOW, "temp_throttle": 63, "temp_critical": 63}, hysteresis_c=0)
    # another card at the same times: another host's recording
    load(engine, H100_BURN, start_ms=START_MS, host=HOST + "-b")
    detector = IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), real)
    for merge, count in ((0, 15), (10, 3)):
        config = real.changed(incident_merge_seconds=merge)
        detector = IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), config)
        detector.rebuild()
        want = expected(trace_rows(H100_BURN, 0), config)
        assert len(want) == count
        assert_matches(stored(engine, gpu_row_id(engine, 0, "h100", HOST + "-b")), want)


def test_missing_temperatures_break_nothing_but_a_data_gap_ends_an_incident(
        engine: sa.Engine, tmp_path: Path) -> None:
    """Ten samples without a temperature inside a hot stretch: still one incident. Then
    two minutes with no temperature at all (> 60 s): the incident ends at its last hot
    sample, and the next hot stretch is another incident."""
    temps: list[int | None] = [70] * 5 + [88] * 10 + [None] * 10 + [88] * 10
    temps += [None] * 120 + [88] * 10 + [70] * 5
    import_file(engine, write_trace(tmp_path / "gaps.csv", temps), start_ms=START_MS,
                host=HOST)
    IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), DEFAULT_CONFIG).run()
    rows = stored(engine, gpu_row_id(engine, 0, "gaps"))
    assert [(r.start_ms - START_MS, r.end_ms - START_MS, r.temp_n) for r in rows] == [
        (5_000, 34_000, 20), (155_000, 165_000, 10)]
    assert_matches(rows, expected(trace_rows(tmp_path / "gaps.csv", 0)))


def test_an_import_of_older_samples_is_rescanned(engine: sa.Engine) -> None:
    """The detector passed START + 1 h; importing the day before rescans from there before
    the import returns: the older incidents are found, the later ones kept."""
    clock = FakeClock(START_MS + 2 * HOUR_MS)
    load(engine, FLEET4, start_ms=START_MS + HOUR_MS, host=HOST)
    detector = IncidentDetector(engine, clock, DEFAULT_CONFIG)
    detector.run()
    gpu = gpu_row_id(engine, 1, "fleet4")
    assert len(stored(engine, gpu)) == 2
    import_file(engine, FLEET4, start_ms=START_MS - 86_400_000, host=HOST, clock=clock)
    assert detector.run().inserted == 0  # the import scanned its own samples
    want = (expected(trace_rows(FLEET4, 1, START_MS - 86_400_000))
            + expected(trace_rows(FLEET4, 1, START_MS + HOUR_MS)))
    assert_matches(stored(engine, gpu), want)


def test_a_scan_overtaken_by_an_import_writes_nothing(engine: sa.Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """If an import marks the GPU dirty while the detector scans, the detector's write is
    skipped (the watermark would hide the imported samples); the next run does it."""
    load(engine, FLEET4, start_ms=START_MS, host=HOST)
    gpu = gpu_row_id(engine, 1, "fleet4")
    detect = incidents_module.detect

    def overtaken(conn, gpu_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        found = detect(conn, gpu_id, *args, **kwargs)
        with engine.begin() as other:
            mark_dirty(other, gpu_id, START_MS)
        return found

    monkeypatch.setattr(incidents_module, "detect", overtaken)
    detector = IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), DEFAULT_CONFIG)
    assert detector.run(gpu).conflicts == 1 and stored(engine, gpu) == []
    monkeypatch.setattr(incidents_module, "detect", detect)
    assert detector.run(gpu).inserted == 2


# -- the API, with live ticks ----------------------------------------------------------------
def test_h100_thresholds_set_over_the_api_then_import_and_list(app, tmp_path: Path) -> None:
    """The real H100 trace: no incident under the defaults. After PUT /api/gpu/config lowers
    the thresholds, an import of it has the computed incidents (newest first over the API,
    filtered by severity and time); the card imported before keeps none until rebuilt."""
    detector = IncidentDetector(app.engine, app.clock, app.config)
    before = tmp_path / "h100_before.csv"  # the same samples, another card
    before.write_bytes(H100_BURN.read_bytes())
    earlier = START_MS - 2 * 86_400_000
    import_file(app.engine, before, start_ms=earlier, host=HOST, config=app.config())
    detector.run()
    assert api(app, "/api/gpu/incidents")["count"] == 0

    put = requests.put(f"{app.url}/api/gpu/config", json=LOW, timeout=5)
    assert put.status_code == 200, put.text
    later = START_MS - 86_400_000
    import_file(app.engine, H100_BURN, start_ms=later, host=HOST, config=app.config())
    detector.run()
    config = app.config()
    want = expected(trace_rows(H100_BURN, 0, later), config)
    assert len(want) == 2
    body = api(app, "/api/gpu/incidents", gpu_id=0)
    assert [(d["start"], d["end"], d["peak_temperature_celsius"], d["severity"])
            for d in body["incidents"]] == [
        (iso_utc(w["start"]), iso_utc(w["end"]), w["peak"], w["severity"])
        for w in reversed(want)]  # newest first
    assert body["incidents"][0]["thresholds"] == {"temp_throttle": 61, "hysteresis_c": 2,
                                                   "temp_critical": 62}
    severe = api(app, "/api/gpu/incidents", severity="severe")["incidents"]
    assert [d["start"] for d in severe] == [
        iso_utc(w["start"]) for w in reversed(want) if w["severity"] == "severe"]
    assert api(app, "/api/gpu/incidents", gpu_id=3)["count"] == 0

    detector.rebuild()
    assert api(app, "/api/gpu/incidents")["count"] == 4
    window = api(app, "/api/gpu/incidents", since=iso_utc(later),
                 until=iso_utc(later + HOUR_MS))
    assert window["count"] == 2
    assert api(app, "/api/gpu/incidents", until=iso_utc(later - 1))["count"] == 2
    newest = api(app, "/api/gpu/incidents", limit=1)["incidents"]
    assert [d["start"] for d in newest] == [iso_utc(want[-1]["start"])]


def test_an_ongoing_incident_updates_as_ticks_arrive(app) -> None:
    """Sampled live at 1 Hz, GPU 1 first reads 85+ °C at t = 125 s. The incident is ongoing
    at 130 s and 150 s (same id, growing peak, duration up to now), and closed once the
    card cools after 200 s — the same rows a fresh rebuild finds."""
    detector = IncidentDetector(app.engine, app.clock, app.config)
    app.tick(1, times=100)
    detector.run()
    assert api(app, "/api/gpu/incidents", gpu_id=1)["count"] == 0
    app.tick(1, times=30)  # t = 130 s
    detector.run()
    first = api(app, "/api/gpu/incidents", gpu_id=1)["incidents"]
    want = expected(sampled_rows(FLEET4, 1, 130), now_ms=app.clock.now_ms())
    assert len(first) == len(want) == 1 and want[0]["end"] is None
    assert first[0]["ongoing"] and first[0]["end"] is None
    assert first[0]["start"] == iso_utc(want[0]["start"]) == "2026-01-01T00:02:05.000Z"
    assert first[0]["duration_seconds"] == 5.0
    assert first[0]["peak_temperature_celsius"] == want[0]["peak"]

    app.tick(1, times=20)  # t = 150 s
    detector.run()
    middle = api(app, "/api/gpu/incidents", gpu_id=1)["incidents"]
    assert [d["id"] for d in middle] == [first[0]["id"]] and middle[0]["ongoing"]
    assert middle[0]["peak_temperature_celsius"] > first[0]["peak_temperature_celsius"]
    assert middle[0]["duration_seconds"] == 25.0

    app.tick(1, times=70)  # t = 220 s
    detector.run()
    last = api(app, "/api/gpu/incidents", gpu_id=1)["incidents"]
    want = expected(sampled_rows(FLEET4, 1, 220), now_ms=app.clock.now_ms())
    assert [(d["id"], d["start"], d["end"], d["peak_temperature_celsius"]) for d in last] == [
        (first[0]["id"], iso_utc(w["start"]), iso_utc(w["end"]), w["peak"]) for w in want]
    assert last[0]["ongoing"] is False and last[0]["duration_seconds"] == 76.0
    gpu = gpu_row_id(app.engine, 1, "sim")
    incremental = stored(app.engine, gpu)
    assert_matches(incremental, want)
    detector.rebuild()
    assert stored(app.engine, gpu) == incremental


def test_the_postmortem_names_the_lease_granted_during_it(app) -> None:
    """The post-mortem of GPU 1's incident: a lease granted during it is listed (and named
    in the summary); one released before it, and one on another GPU, are not."""
    def allocate(allocation_id: str, gpu_id: int, owner: str = "alice") -> dict[str, Any]:
        response = requests.post(f"{app.url}/api/gpu/memory/allocate", json={
            "allocation_id": allocation_id, "memory_mb": 20480, "gpu_id": gpu_id,
            "owner": owner, "ttl_seconds": 600}, timeout=5)
        assert response.status_code == 201, response.text
        return response.json()

    early = allocate("early", 1, "bob")
    app.tick(1, times=10)
    requests.post(f"{app.url}/api/gpu/memory/deallocate", json={
        "allocation_id": "early", "lease_token": early["lease_token"]}, timeout=5)
    app.tick(1, times=120)  # t = 130 s: GPU 1 is overheating (since 125 s)
    allocate("train-42", 1)
    allocate("other-gpu", 2)
    app.tick(1, times=90)  # t = 220 s: cooled down
    IncidentDetector(app.engine, app.clock, app.config).run()
    [summary] = api(app, "/api/gpu/incidents", gpu_id=1)["incidents"]
    doc = api(app, f"/api/gpu/incidents/{summary['id']}")

    assert [lease["allocation_id"] for lease in doc["leases"]] == ["train-42"]
    assert doc["leases"][0]["owner"] == "alice" and doc["leases"][0]["memory_mb"] == 20480
    assert "lease_token" not in doc["leases"][0]
    assert "leases active: train-42 (alice, 20480 MiB)" in doc["summary"]
    assert "1 °C past the card's own slowdown temperature (89 °C)" in doc["summary"]
    assert doc["summary"].startswith("GPU 1 was above 85 °C for ")
    assert "the hardware reported SwPowerCap" in doc["summary"]
    want = expected(sampled_rows(FLEET4, 1, 220))[0]
    assert doc["peak_temperature_celsius"] == want["peak"]
    assert doc["card"]["margin_to_slowdown_celsius"] == 89 - want["peak"]  # sim: H100 89 °C
    seen = {r["name"]: r for r in doc["clock_event_reasons_seen"]}
    assert seen["SwPowerCap"]["samples"] == want["n"]
    assert seen["SwPowerCap"]["seconds"] == (want["end"] - want["start"]) / 1000
    assert doc["memory"]["max_used_mb"] > 0 and doc["memory"]["total_mb"] == 81559
    tos = [(t["from"], t["to"]) for t in doc["transitions"]]
    assert ("THROTTLED", "CRITICAL") in tos and ("CRITICAL", "OPTIMAL") in tos
    assert doc["samples_total"] == len(doc["samples"]) == 221  # every sample of the run
    assert set(doc["samples"][0]) == set(GPUMetrics.__dataclass_fields__)
    # What ran, and the hardware's own throttle time, where the backend records them.
    assert doc["processes"] is None or all(
        {"pid", "name", "used_memory_mb", "first_seen_at", "ended_at"} <= set(p)
        for p in doc["processes"])
    throttle = doc["throttle_time_seconds"]
    assert throttle is None or set(throttle) == {"power_cap", "sw_thermal", "hw_thermal",
                                                 "power_brake"}
    assert doc["xid_errors"] == []
    thin = api(app, f"/api/gpu/incidents/{summary['id']}", max_samples=50)
    assert thin["samples_stride"] == 5 and len(thin["samples"]) == 45


def test_samples_csv_and_errors(app) -> None:
    """samples.csv: the GPUMetrics columns, one row per context sample. Unknown ids are
    404 in the error shape; since after until is 422."""
    app.tick(1, times=220)
    IncidentDetector(app.engine, app.clock, app.config).run()
    [summary] = api(app, "/api/gpu/incidents", gpu_id=1)["incidents"]
    response = requests.get(f"{app.url}/api/gpu/incidents/{summary['id']}/samples.csv",
                            timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(
        "text/csv")
    rows = list(csv.DictReader(response.text.splitlines()))
    assert list(rows[0]) == list(GPUMetrics.__dataclass_fields__)
    assert len(rows) == 221 and {r["gpu_id"] for r in rows} == {"1"}
    assert "SwPowerCap" in {r["clock_event_reasons"] for r in rows}
    for path in ("/api/gpu/incidents/999", "/api/gpu/incidents/999/samples.csv"):
        missing = requests.get(f"{app.url}{path}", timeout=5)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "incident_not_found"
    for params, status in (({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01"}, 422),
                           ({"severity": "mild"}, 422), ({"limit": 0}, 422),
                           ({"since": "soon"}, 400), ({"gpu_id": "x"}, 400)):
        bad = requests.get(f"{app.url}/api/gpu/incidents", params=params, timeout=5)
        assert bad.status_code == status, (params, bad.text)
        assert set(bad.json()["error"]) == {"code", "message", "details"}
    spec = requests.get(f"{app.url}/api/openapi.json", timeout=5).json()
    assert {"/api/gpu/incidents", "/api/gpu/incidents/{incident_id}",
            "/api/gpu/incidents/{incident_id}/samples.csv"} <= set(spec["paths"])


# -- the CLI and the Python client -----------------------------------------------------------
def test_cli_lists_and_shows_from_the_database(engine: sa.Engine, db_url: str) -> None:
    """`incidents --db` scans first, so it works straight after an import; `show` prints
    the post-mortem, `--json` its document, `--csv` every context sample; exit 3 when
    the id is unknown."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    runner = CliRunner()
    base = ["--db", db_url, "--host-name", HOST]
    listed = runner.invoke(cli, ["incidents", *base, "--json"])
    assert listed.exit_code == 0, listed.output
    docs = json.loads(listed.output)["incidents"]
    want = expected(trace_rows(FLEET4, 1))
    assert [d["start"] for d in docs] == [iso_utc(w["start"]) for w in reversed(want)]
    table = runner.invoke(cli, ["incidents", *base, "--gpu-id", "1", "--severity", "overheat"])
    assert table.exit_code == 0 and "SwPowerCap" in table.output and "90 C" in table.output
    text = runner.invoke(cli, ["incidents", "show", str(docs[0]["id"]), *base])
    assert text.exit_code == 0 and "GPU 1 was above 85 °C" in text.output
    as_json = runner.invoke(cli, ["incidents", "show", str(docs[0]["id"]), *base, "--json"])
    assert json.loads(as_json.output)["peak_temperature_celsius"] == 90
    as_csv = runner.invoke(cli, ["incidents", *base, "show", str(docs[0]["id"]), "--csv"])
    lines = as_csv.output.splitlines()
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(samples).where(
            samples.c.gpu_id == gpu_row_id(engine, 1, "fleet4"))).scalar()
    assert lines[0].startswith("gpu_id,uuid,name,timestamp") and len(lines) == count + 1
    missing = runner.invoke(cli, ["incidents", "show", "999", *base])
    assert missing.exit_code == 3 and "incident_not_found" in missing.output
    rebuilt = runner.invoke(cli, ["incidents", "rebuild", *base])
    assert rebuilt.exit_code == 0 and "0 incident(s) added" in rebuilt.output


def test_cli_and_client_ask_a_server(app) -> None:
    """`incidents --url` and `show --url` read the API; so does Client.incidents()."""
    from gpuhistory.client import Client

    app.tick(1, times=220)
    IncidentDetector(app.engine, app.clock, app.config).run()
    client = Client(app.url)
    [doc] = client.incidents(gpu_id=1)
    assert client.incident(doc["id"], max_samples=0)["samples"] == []
    runner = CliRunner()
    listed = runner.invoke(cli, ["incidents", "--url", app.url, "--json"])
    assert json.loads(listed.output)["incidents"][0]["id"] == doc["id"]
    shown = runner.invoke(cli, ["incidents", "show", str(doc["id"]), "--url", app.url])
    assert shown.exit_code == 0 and "Leases active (0)" in shown.output
    as_csv = runner.invoke(cli, ["incidents", "show", str(doc["id"]), "--url", app.url,
                                 "--csv"])
    assert len(as_csv.output.splitlines()) == 222
    missing = runner.invoke(cli, ["incidents", "show", "999", "--url", app.url])
    assert missing.exit_code == 3


def test_the_summary_sentence() -> None:
    """Ongoing incidents say "has been ... so far"; severe ones how long above critical;
    no reasons and no leases are said as such; durations read like a person wrote them."""
    from gpuhistory.analytics.postmortem import format_duration, summary_sentence

    assert [format_duration(s) for s in (0.3, 5.0, 47.4, 133, 3725)] == [
        "0.3 s", "5 s", "47 s", "2 min 13 s", "1 h 2 min"]
    doc = {"gpu_id": 3, "ongoing": True, "duration_seconds": 133, "peak_temperature_celsius": 93,
           "peak_at": "2026-11-26T03:14:05.000Z", "severity": "severe",
           "above_critical_seconds": 12, "thresholds": {"temp_throttle": 85,
                                                        "temp_critical": 90},
           "card": {"slowdown_temp_celsius": 95, "margin_to_slowdown_celsius": 2},
           "clock_event_reasons_seen": [], "leases": [
               {"allocation_id": "a", "owner": None, "memory_mb": 512}]}
    assert summary_sentence(doc) == (
        "GPU 3 has been above 85 °C for 2 min 13 s so far, peaking at 93 °C at 03:14:05Z "
        "(severe: 12 s above 90 °C); the hardware reported no clock-event reasons; "
        "leases active: a (512 MiB)")
