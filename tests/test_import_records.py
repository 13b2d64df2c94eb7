"""What ``import`` records does not change when the import gets faster.

Each input is imported into a fresh migrated SQLite file and every table's content is
hashed (rows sorted, ``repr`` of each value). The expected digests were taken from the
importer before its hot path was rewritten for speed (tuples for sample rows, the steady
fast path of classification, a GPU resolved once per run of readings), so any difference
in samples, transitions, events, incidents, rollups or ``gpus`` rows fails here.

Inputs: both bundled traces, the fleet trace looped as the import benchmark loops it, and
a seeded synthetic trace that crosses every boundary both ways, holds cooldowns and
critical pauses, runs them out, reports implausible values and empty cells.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.importing import looped_trace
from gpuhistory.clock import FakeClock
from gpuhistory.importer import import_file
from gpuhistory.storage.engine import make_engine, upgrade
from tests.conftest import FLEET4, H100_BURN

START_MS = 1_767_225_600_000
NOW_MS = START_MS + 30 * 86_400_000  # late enough for every rollup to be built
HOST = "recordhost"
HEADER = ("t_s,gpu,temperature_c,memory_temperature_c,power_w,sm_clock_mhz,mem_clock_mhz,"
          "utilization_pct,memory_used_mib,memory_total_mib,clock_event_reasons,pstate")


def synthetic_trace(path: Path, seconds: int = 3000, gpus: int = 3) -> None:
    """Random walks across every boundary, with implausible readings and empty cells."""
    rng = random.Random(16)
    temps = [40.0] * gpus
    used = [10_000.0] * gpus
    lines = [HEADER]
    for s in range(seconds):
        for g in range(gpus):
            temps[g] = min(99.0, max(25.0, temps[g] + rng.uniform(-2.5, 2.6)))
            used[g] = min(81_000.0, max(0.0, used[g] + rng.uniform(-3000, 3100)))
            temp: object = round(temps[g])
            mem_used: object = round(used[g])
            roll = rng.random()
            if roll < 0.01:
                temp = rng.choice((0, 255))  # a broken sensor's answer
            elif roll < 0.015:
                mem_used = 90_000  # more than the card has
            elif roll < 0.02:
                temp = ""  # not supported this row
            power = "" if roll > 0.99 else f"{rng.uniform(60, 700):.3f}"
            lines.append(f"{s}.{g}00,{g},{temp},{round(temps[g]) + 2},{power},1980,2619,"
                         f"{rng.randint(0, 100)},{mem_used},81559,{rng.choice((0, 1, 4))},0")
    path.write_text("\n".join(lines) + "\n")


def digests(engine: sa.Engine) -> dict[str, str]:
    """Table name → sha256 of its sorted rows (alembic_version left out)."""
    out = {}
    with engine.connect() as conn:
        for name in sorted(sa.inspect(conn).get_table_names()):
            if name == "alembic_version":
                continue
            rows = sorted(repr(tuple(row)) for row in
                          conn.execute(sa.text(f"SELECT * FROM {name}")))
            text = "\n".join(rows).encode()
            out[name] = f"{len(rows)}:{hashlib.sha256(text).hexdigest()[:16]}"
    return out


def imported(tmp_path: Path, trace: Path) -> dict[str, str]:
    engine = make_engine(tmp_path / "records.db")
    upgrade(engine)
    try:
        import_file(engine, trace, start_ms=START_MS, host=HOST, clock=FakeClock(NOW_MS))
        return digests(engine)
    finally:
        engine.dispose()


def inputs(tmp_path: Path) -> dict[str, Path]:
    looped = tmp_path / "looped.csv"
    looped_trace(looped, 3)
    synthetic = tmp_path / "synthetic.csv"
    synthetic_trace(synthetic)
    return {"fleet4": FLEET4, "h100_burn": H100_BURN, "fleet4_looped3": looped,
            "synthetic": synthetic}


EXPECTED: dict[str, dict[str, Any]] = {
    'fleet4': {
        'events': '25:dec3a6e02d6e6ccd',
        'gpu_processes': '0:e3b0c44298fc1c14',
        'gpus': '4:6ae5fd7f52127336',
        'incident_progress': '4:43addf8ddf4a581f',
        'incidents': '2:28c17fcdd9c4d4f0',
        'leases': '0:e3b0c44298fc1c14',
        'maintenance_runs': '0:e3b0c44298fc1c14',
        'rollup_progress': '8:f57602bef622293d',
        'sampler_claims': '0:e3b0c44298fc1c14',
        'samples': '10404:b8db8ee5f057150c',
        'samples_1h': '4:95edd545f74b86e5',
        'samples_1m': '20:8fdeb4d4cd8e1fc4',
        'throttle_counters': '0:e3b0c44298fc1c14',
        'transitions': '20:b2a56218852645cd',
        'webhook_deliveries': '0:e3b0c44298fc1c14',
        'webhooks': '0:e3b0c44298fc1c14',
    },
    'fleet4_looped3': {
        'events': '69:48f14cd50f713b89',
        'gpu_processes': '0:e3b0c44298fc1c14',
        'gpus': '4:ed9ec04d0774538a',
        'incident_progress': '4:77a833dec60d802b',
        'incidents': '6:ba903321eb6cc290',
        'leases': '0:e3b0c44298fc1c14',
        'maintenance_runs': '0:e3b0c44298fc1c14',
        'rollup_progress': '8:f57602bef622293d',
        'sampler_claims': '0:e3b0c44298fc1c14',
        'samples': '31212:e52a7ccd3eee8c3e',
        'samples_1h': '4:fb9bf213396d4a85',
        'samples_1m': '56:2d43c1aca2c4ece0',
        'throttle_counters': '0:e3b0c44298fc1c14',
        'transitions': '52:b377599951076286',
        'webhook_deliveries': '0:e3b0c44298fc1c14',
        'webhooks': '0:e3b0c44298fc1c14',
    },
    'h100_burn': {
        'events': '3:9a1d811b59d5b29f',
        'gpu_processes': '0:e3b0c44298fc1c14',
        'gpus': '1:873571054fac97df',
        'incident_progress': '1:4e71a145ab7faef6',
        'incidents': '0:e3b0c44298fc1c14',
        'leases': '0:e3b0c44298fc1c14',
        'maintenance_runs': '0:e3b0c44298fc1c14',
        'rollup_progress': '2:23edcf84cbdf8d79',
        'sampler_claims': '0:e3b0c44298fc1c14',
        'samples': '2601:6857a4e69d185c2f',
        'samples_1h': '1:d987885f9ec4d040',
        'samples_1m': '5:8fcbcff44ed20119',
        'throttle_counters': '0:e3b0c44298fc1c14',
        'transitions': '3:bb61b85f6aa9d2d5',
        'webhook_deliveries': '0:e3b0c44298fc1c14',
        'webhooks': '0:e3b0c44298fc1c14',
    },
    'synthetic': {
        'events': '811:92f7d614b56bae27',
        'gpu_processes': '0:e3b0c44298fc1c14',
        'gpus': '3:d81ff9fe279fc3e7',
        'incident_progress': '3:d0d7a5c986b48150',
        'incidents': '23:c34b6e1473b05cf8',
        'leases': '0:e3b0c44298fc1c14',
        'maintenance_runs': '0:e3b0c44298fc1c14',
        'rollup_progress': '6:5367ca4e5c1643f6',
        'sampler_claims': '0:e3b0c44298fc1c14',
        'samples': '9000:a91490452845bfa2',
        'samples_1h': '3:e3b7d93b89611a66',
        'samples_1m': '150:ac15d8794f2eb3d3',
        'throttle_counters': '0:e3b0c44298fc1c14',
        'transitions': '356:46ef49d23f61541d',
        'webhook_deliveries': '0:e3b0c44298fc1c14',
        'webhooks': '0:e3b0c44298fc1c14',
    },
}


@pytest.mark.parametrize("name", ["fleet4", "h100_burn", "fleet4_looped3", "synthetic"])
def test_import_records_every_table_as_before(tmp_path: Path, name: str) -> None:
    """Every table after the import hashes to what the importer recorded before."""
    got = imported(tmp_path, inputs(tmp_path)[name])
    assert got == EXPECTED[name]
