"""One GPU identity: a slot (host, index) answers with the card that held it at the question's
time, in the API, the CLI and the dashboard's requests; imports never make two cards share a
slot, and a recording never adds lease capacity to a live slot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.cli.main import cli
from gpuhistory.clock import iso_utc
from gpuhistory.importer import SlotClashError, import_file
from tests.conftest import FLEET4

pytestmark = pytest.mark.postgres

START_MS = 1_767_225_600_000  # FakeClock's start: the live sim cards arrive here
DAY_MS = 86_400_000
RECORDED = START_MS - DAY_MS  # a recording of the same host's slots, the day before
HOST = "testhost"


def get(url: str, path: str, **params: object) -> requests.Response:
    return requests.get(url + path, params=params, timeout=10)


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("gpus", "samples", "events", "incidents", "samples_1m")}


def db_arg(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def cli_json(engine: sa.Engine, *args: str) -> dict:
    result = CliRunner().invoke(cli, [*args, "--db", db_arg(engine), "--host", HOST])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def recorded(app, engine: sa.Engine) -> dict[str, str]:
    """fleet4 recorded the day before imported onto the live host; slot 1 overheats twice."""
    app.tick(1.0, times=5)
    import_file(engine, FLEET4, start_ms=RECORDED, host=HOST, clock=app.clock)
    with engine.connect() as conn:
        uuids = dict(conn.execute(sa.text(
            "SELECT backend, uuid FROM gpus WHERE host = :h AND gpu_index = 1"), {"h": HOST}
        ).all())
    return {"live": uuids["sim"], "recorded": uuids["trace"]}


def test_a_recording_on_a_live_host_answers_for_the_recorded_card_at_its_times(
        app, engine: sa.Engine, recorded: dict[str, str]) -> None:
    """Asked about a time inside the recording, trend, history and status `at` name and
    read the recorded card; asked about now, the live card."""
    inside = iso_utc(RECORDED + 60_000)
    trend = get(app.url, "/api/gpu/temperature/trend", gpu_id=1, until=inside,
                duration_minutes=1).json()
    assert (trend["uuid"], trend["samples"] > 0) == (recorded["recorded"], True)
    history = get(app.url, "/api/gpu/metrics/history", gpu_id=1, since=iso_utc(RECORDED),
                  until=inside).json()
    assert history["uuid"] == recorded["recorded"] and history["count"] > 0
    assert {s["uuid"] for s in history["samples"]} == {recorded["recorded"]}
    past = get(app.url, "/api/gpu/status", gpu_id=1, at=inside).json()
    assert past["uuid"] == recorded["recorded"] and past["timestamp"] is not None
    now = get(app.url, "/api/gpu/status", gpu_id=1).json()
    assert now["uuid"] == recorded["live"]
    before = get(app.url, "/api/gpu/status", gpu_id=1, at=iso_utc(RECORDED - DAY_MS))
    assert (before.status_code, before.json()["error"]["code"]) == (404, "no_samples")


def test_the_postmortem_chart_asks_for_the_incidents_card_and_finds_its_samples(
        app, recorded: dict[str, str]) -> None:
    """The imported incidents are listed at once, and the post-mortem chart's request (the
    incident's uuid and host over its window, as incident.js asks) returns its samples."""
    listed = get(app.url, "/api/gpu/incidents", gpu_id=1).json()["incidents"]
    assert listed and {i["uuid"] for i in listed} == {recorded["recorded"]}
    doc = get(app.url, f"/api/gpu/incidents/{listed[0]['id']}", max_samples=0).json()
    chart = get(app.url, "/api/gpu/metrics/history", uuid=doc["uuid"], host=doc["host"],
                since=doc["window"]["since"], until=doc["window"]["until"], points=200).json()
    assert chart["uuid"] == recorded["recorded"]
    assert sum(b["samples"] for b in chart["buckets"]) > 0
    by_uuid = get(app.url, "/api/gpu/incidents", uuid=recorded["live"]).json()
    assert by_uuid["count"] == 0
    from gpuhistory.client import Client

    client = Client(app.url)
    assert client.history(uuid=doc["uuid"], since=doc["window"]["since"],
                          until=doc["window"]["until"], points=200)["uuid"] == recorded["recorded"]
    js = (Path(__file__).parents[1] / "web/static/js/incident.js").read_text()
    assert "uuid: doc.uuid, host: doc.host" in js


def test_the_cli_reads_the_recorded_card_at_its_times(engine: sa.Engine,
                                                      recorded: dict[str, str]) -> None:
    """history, status --at and incidents name the recorded card for its times."""
    inside = iso_utc(RECORDED + 60_000)
    history = cli_json(engine, "history", "--gpu-id", "1", "--since", iso_utc(RECORDED),
                       "--until", inside, "--format", "json")
    assert history["uuid"] == recorded["recorded"] and history["count"] > 0
    status = cli_json(engine, "status", "--gpu-id", "1", "--at", inside, "--json")
    assert [g["uuid"] for g in status["gpus"]] == [recorded["recorded"]]
    incidents = cli_json(engine, "incidents", "--no-detect", "--gpu-id", "1", "--json")
    assert {i["uuid"] for i in incidents["incidents"]} == {recorded["recorded"]}
    empty = CliRunner().invoke(cli, ["status", "--db", db_arg(engine), "--host", HOST,
                                     "--at", iso_utc(RECORDED - DAY_MS)])
    assert empty.exit_code == 3 and "UNAVAILABLE" not in empty.output
    assert "no samples recorded" in empty.output


def test_a_recording_adds_no_lease_capacity_to_a_live_slot(app,
                                                           recorded: dict[str, str]) -> None:
    """Capacity now is the live card's; the recorded card of the same slot has none, so a
    full-card lease on gpu_id=0 is granted once, not once per card."""
    live = get(app.url, "/api/gpu/memory/available", gpu_id=1).json()
    assert live["uuid"] == recorded["live"] and live["capacity_mb"] > 0
    old = get(app.url, "/api/gpu/memory/available", uuid=recorded["recorded"]).json()
    assert old["capacity_mb"] == 0
    body = {"allocation_id": "all", "memory_mb": live["capacity_mb"], "gpu_id": 1}
    assert requests.post(app.url + "/api/gpu/memory/allocate", json=body, timeout=10
                         ).status_code == 201
    again = requests.post(app.url + "/api/gpu/memory/allocate", timeout=10, json={
        **body, "allocation_id": "again", "uuid": recorded["recorded"]})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "over_capacity")


def test_a_recording_overlapping_another_card_in_its_slot_is_refused_and_changes_nothing(
        app, engine: sa.Engine) -> None:
    """fleet4 imported at the live cards' own times would put a second card in each slot:
    refused, naming --host-name, with nothing written."""
    app.tick(1.0, times=5)
    before = counts(engine)
    with pytest.raises(SlotClashError, match="--host-name"):
        import_file(engine, FLEET4, start_ms=START_MS - 2_000, host=HOST, clock=app.clock)
    assert counts(engine) == before
    import_file(engine, FLEET4, start_ms=START_MS - 2_000, host="other", clock=app.clock)


def test_a_recording_reaching_into_the_future_cannot_double_book_a_live_slot(
        app, engine: sa.Engine) -> None:
    """A recording from before now into the future, imported onto the live host, would put
    a second card in each live slot: refused, so slot 1 still leases one card's capacity
    once (a full-card lease, then over_capacity)."""
    app.tick(1.0, times=3)
    with pytest.raises(SlotClashError):
        import_file(engine, FLEET4, start_ms=app.clock.now_ms() - 1_000, host=HOST,
                    clock=app.clock)
    cap = get(app.url, "/api/gpu/memory/available", gpu_id=1).json()["capacity_mb"]
    body = {"allocation_id": "full", "memory_mb": cap, "gpu_id": 1}
    first = requests.post(app.url + "/api/gpu/memory/allocate", json=body, timeout=10)
    second = requests.post(app.url + "/api/gpu/memory/allocate", timeout=10,
                           json={**body, "allocation_id": "full-2"})
    assert (first.status_code, second.status_code) == (201, 409)


def write_trace(path: Path, temps: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["t_s,gpu,temperature_c,memory_total_mib"]
    rows += [f"{s},0,{t},81559" for s, t in enumerate(temps)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_card_swapped_into_slot_0_reads_correctly_on_both_sides(
        engine: sa.Engine, live_api, clock, tmp_path: Path) -> None:
    """Card A in slot 0 for 100 s, card B from 200 s on: every question before the swap
    answers with A, every one after (and now) with B."""
    a = write_trace(tmp_path / "cardA.csv", [50] * 100)
    b = write_trace(tmp_path / "cardB.csv", [70] * 100)
    import_file(engine, a, start_ms=START_MS, host=HOST, clock=clock)
    import_file(engine, b, start_ms=START_MS + 200_000, host=HOST, clock=clock)
    clock.set(START_MS + 400_000)
    url = live_api().url
    for t, card, temp in ((START_MS + 90_000, "cardA", 50), (START_MS + 290_000, "cardB", 70)):
        status = get(url, "/api/gpu/status", gpu_id=0, at=iso_utc(t)).json()
        assert card in status["uuid"] and status["metrics"]["temperature_celsius"] == temp
        trend = get(url, "/api/gpu/temperature/trend", gpu_id=0, until=iso_utc(t),
                    duration_minutes=1).json()
        assert card in trend["uuid"] and trend["max"] == temp
        history = get(url, "/api/gpu/metrics/history", gpu_id=0,
                      since=iso_utc(t - 30_000), until=iso_utc(t)).json()
        assert card in history["uuid"]
        assert {s["temperature_celsius"] for s in history["samples"]} == {temp}
        cli_history = cli_json(engine, "history", "--gpu-id", "0", "--since",
                               iso_utc(t - 30_000), "--until", iso_utc(t), "--format", "json")
        assert card in cli_history["uuid"]
    assert "cardB" in get(url, "/api/gpu/status", gpu_id=0).json()["uuid"]
