"""A recorded run on real GPUs: ``gpuhistory serve --backend nvml`` while a load runs.

    python -m bench.gpu_run --seconds 60 --load-start 15 --load-seconds 30 --out run.json

Starts serve as a subprocess on a fresh database, optionally runs a bf16 matrix-multiply
load on one GPU (PyTorch) for part of the run, stops serve with SIGTERM, and summarises
what the log holds: rows per GPU, states, transitions, events, clock-event reasons seen,
temperature and power ranges, and the tick durations serve reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from gpuhistory.domain.reading import clock_event_reason_names
from gpuhistory.domain.states import GPUState

LOAD = """
import sys, time, torch
gpu, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.cuda.set_device(gpu)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end, n = time.time() + seconds, 0
while time.time() < end:
    for _ in range(20):
        a @ b
    torch.cuda.synchronize(); n += 20
print(f"load done: {n} matmuls, {n * 2 * 8192**3 / seconds / 1e12:.0f} TFLOP/s", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def summarise(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    out: dict[str, Any] = {"gpus": []}
    for g in conn.execute("SELECT * FROM gpus ORDER BY gpu_index"):
        stats = conn.execute(
            "SELECT count(*) n, min(ts_ms) t0, max(ts_ms) t1, min(temperature_c) tmin, "
            "max(temperature_c) tmax, min(power_dw) pmin, max(power_dw) pmax, "
            "max(memory_used_mib) mem_max, max(sm_clock_mhz) sm_max FROM samples WHERE gpu_id=?",
            (g["id"],)).fetchone()
        states = {GPUState(s).name: n for s, n in conn.execute(
            "SELECT state, count(*) FROM samples WHERE gpu_id=? GROUP BY state", (g["id"],))}
        masks = {m: n for m, n in conn.execute(
            "SELECT clock_event_reasons, count(*) FROM samples WHERE gpu_id=? "
            "GROUP BY clock_event_reasons", (g["id"],))}
        reasons: dict[str, int] = {}
        for mask, n in masks.items():
            for name in clock_event_reason_names(mask) or ["none"]:
                reasons[name] = reasons.get(name, 0) + n
        transitions = [dict(r) for r in conn.execute(
            "SELECT ts_ms, from_state, to_state, cause, temperature_c, memory_percent "
            "FROM transitions WHERE gpu_id=? ORDER BY id", (g["id"],))]
        out["gpus"].append({
            "index": g["gpu_index"], "uuid": g["uuid"], "name": g["name"],
            "memory_total_mib": g["memory_total_mib"], "power_limit_w": g["power_limit_w"],
            "slowdown_temp_c": g["slowdown_temp_c"], "shutdown_temp_c": g["shutdown_temp_c"],
            "samples": stats["n"], "span_s": (stats["t1"] - stats["t0"]) / 1000,
            "temperature_c": [stats["tmin"], stats["tmax"]],
            "power_w": [stats["pmin"] / 10, stats["pmax"] / 10],
            "memory_used_max_mib": stats["mem_max"], "sm_clock_max_mhz": stats["sm_max"],
            "states": states, "clock_event_reasons": reasons,
            "transitions": [{**t, "from_state": None if t["from_state"] is None
                             else GPUState(t["from_state"]).name,
                             "to_state": GPUState(t["to_state"]).name} for t in transitions],
        })
    out["events"] = dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    out["db_bytes"] = db.stat().st_size
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--backend", default="nvml", choices=["nvml", "sim"],
                        help="sim: rehearse the run without a GPU")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--load-gpu", type=int, default=0)
    parser.add_argument("--load-start", type=float, default=None)
    parser.add_argument("--load-seconds", type=float, default=30)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--thresholds", type=json.loads, default=None,
                        help='config to PUT once serve is up, e.g. \'{"temp_throttle": 55}\'')
    parser.add_argument("--settle", type=float, default=0,
                        help="seconds to wait after --seconds for incident detection (10 s job)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "gpu_run.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen(
        [sys.executable, "-m", "gpuhistory.cli.main", "serve", "--db", str(db), "--port",
         str(port), "--backend", args.backend, "--interval", str(args.interval)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    health_samples: list[dict[str, Any]] = []
    load = None
    started = time.monotonic()
    config_change = None
    try:
        if args.thresholds:
            while time.monotonic() - started < 60:
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/healthz", timeout=2).ok:
                        break
                time.sleep(0.2)
            config_change = requests.put(f"{url}/api/gpu/config", json=args.thresholds,
                                         timeout=10).json()
        while time.monotonic() - started < args.seconds:
            elapsed = time.monotonic() - started
            if load is None and args.load_start is not None and elapsed >= args.load_start:
                load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.load_gpu),
                                         str(args.load_seconds)], text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            with contextlib.suppress(requests.RequestException):
                health_samples.append(requests.get(f"{url}/healthz", timeout=2).json())
            time.sleep(1)
        time.sleep(args.settle)
        status_all = requests.get(f"{url}/api/gpu/status/all", timeout=5).json()
        incidents = requests.get(f"{url}/api/gpu/incidents", timeout=30).json()
        postmortems = [requests.get(f"{url}/api/gpu/incidents/{i['id']}",
                                    params={"max_samples": 60}, timeout=60).json()
                       for i in incidents.get("incidents", [])[:3]]
        events = requests.get(f"{url}/api/gpu/events", params={"limit": 1000},
                              timeout=30).json()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve_log, _ = serve.communicate(timeout=60)
        load_log = load.communicate(timeout=120)[0] if load is not None else None
    ticks = [h["last_tick"]["duration_ms"] for h in health_samples
             if h.get("last_tick") and h["last_tick"].get("duration_ms") is not None]
    result = {
        "command": " ".join(sys.argv), "serve_exit": serve.returncode,
        "serve_log_tail": serve_log[-3000:], "load_log": load_log,
        "tick_ms": {"n": len(ticks), "min": min(ticks, default=None),
                    "median": sorted(ticks)[len(ticks) // 2] if ticks else None,
                    "max": max(ticks, default=None)},
        "health_last": health_samples[-1] if health_samples else None,
        "status_all": status_all, "config_change": config_change,
        "incidents": incidents, "postmortems": postmortems,
        "event_kinds": _count(e["kind"] for e in events.get("events", [])),
        "log": summarise(db),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0 if serve.returncode == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
