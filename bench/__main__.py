"""Run every benchmark, print a table and write JSON.

    python -m bench                # the full run
    python -m bench --quick        # a short run (what the smoke test uses)
    python -m bench --only tick    # some benchmarks by name
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Figure, SkipBenchmark, machine

BENCHMARKS = {
    "tick": "bench.tick",
    "nvml": "bench.nvml_tick",
    "import": "bench.importing",
    "storage": "bench.storage",
    "http": "bench.http_api",
    "analytics": "bench.analytics",
    "cost": "bench.cost",
    "scaling": "bench.scaling",
    "prometheus": "bench.prometheus",
    "wsgi": "bench.wsgi_servers",
}


def render(figures: list[Figure]) -> str:
    headers = ["benchmark", "figure", "value", "p50", "p99", "n", "budget", "ok"]
    rows = [[f.benchmark, f.name, f"{f.value:g} {f.unit}",
             "" if f.p50 is None else f"{f.p50:g}", "" if f.p99 is None else f"{f.p99:g}",
             "" if f.n is None else str(f.n), f.budget or "",
             "" if f.ok is None else ("yes" if f.ok else "NO")] for f in figures]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    notes = [f"  {f.benchmark}/{f.name}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="folder for the JSON results")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    figures: list[Figure] = []
    skipped: dict[str, str] = {}
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(BENCHMARKS[name])
        t0 = time.perf_counter()
        try:
            figures.extend(module.run(args.quick))
        except SkipBenchmark as exc:
            skipped[name] = str(exc)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    print(render(figures))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    result = {
        "date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "quick": args.quick, "machine": machine(), "skipped": skipped,
        "figures": [f.to_dict() for f in figures],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
