"""The dashboard on a long history: page weight and time to first chart, in a real browser.

    python -m bench.dashboard                 # the 30-day, 8-GPU log (built once: minutes)
    python -m bench.dashboard --days 1        # a 1-day log, for a quick look

The log (N days of 8 GPUs at 1 Hz, bench/month.py, cached in bench/data/) is served by the
real app over waitress with the clock at the log's end, after the rollup and incident jobs
have caught up. Debian's Chromium, headless through Playwright, opens each page in a fresh
browser context (nothing cached) ``--runs`` times:

- the history of GPU 1 over 15 minutes, 24 hours and the whole log (30 days);
- the fleet: eight cards, each with its 15-minute sparkline;
- the post-mortem of GPU 1's newest incident.

*Time to first chart*: from navigation start to the first animation frame in which the
chart (every sparkline, for the fleet) has drawn its data — the page sets ``data-points`` on
a chart's element once uPlot has drawn it. *Page weight*: the bytes of every response the
page loaded, once the network is idle (HTML, scripts, styles, the chart library, API JSON —
the history's transition and lease marks too, which arrive after the chart; the app sends no
compression), from the browser's Resource Timing entries. A table is printed and JSON
written to docs/results/dashboard.json.

The event stream is answered by the browser itself with an empty stream: a real one holds
a server thread until the next heartbeat after its tab has gone (up to 15 s), and dozens of
cold page loads in a row would pile those up and measure thread starvation instead. The
first chart never waits for the stream.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.analytics import Api
from bench.common import Figure, SkipBenchmark, machine, percentile
from bench.month import START_MS, month_log

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "dashboard.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}

# Resolves, in the page, to performance.now() at the first frame where every element the
# selector matches has drawn data (and there are at least `count` of them).
DRAWN = """([selector, count]) => {
    const charts = [...document.querySelectorAll(selector)];
    const drawn = charts.length >= count && charts.every(
        (el) => Number(el.dataset.points) > 0 && el.querySelector("canvas"));
    return drawn ? performance.now() : false;
}"""

WEIGHT = """() => {
    const entries = [...performance.getEntriesByType("navigation"),
                     ...performance.getEntriesByType("resource")];
    const out = {files: 0, data: 0, requests: 0, history: 0, history_ms: []};
    for (const e of entries) {
        const path = new URL(e.name).pathname;
        const bytes = e.encodedBodySize;
        out.requests += 1;
        if (path.startsWith("/api/") || path === "/healthz") out.data += bytes;
        else out.files += bytes;
        if (path === "/api/gpu/metrics/history") {
            out.history += bytes;
            out.history_ms.push(e.responseEnd - e.requestStart);
        }
    }
    return out;
}"""


def scenarios(api: Api, days: float) -> list[tuple[str, str, str, int]]:
    """(name, route, chart selector, charts expected) for each page measured."""
    incidents = api.get("/api/gpu/incidents?gpu_id=1&limit=1")["incidents"]
    whole = "30d" if days >= 30 else "7d" if days >= 7 else "24h"
    out = [("history, 15 min", "#/history/1?range=15m", ".chart", 1),
           ("history, 24 h", "#/history/1?range=24h", ".chart", 1)]
    if whole != "24h":
        out.append((f"history, {whole}", f"#/history/1?range={whole}", ".chart", 1))
    out.append(("fleet, 8 sparklines", "#/fleet", ".spark", 8))
    if incidents:
        out.append(("post-mortem", f"#/incidents/{incidents[0]['id']}", "#incident-timeline",
                    1))
    return out


def _quiet_stream(route: Any) -> None:
    """An event stream that opens and stays silent (see the module's docstring)."""
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"},
                  body="retry: 600000\n\n")


def measure(browser: Any, url: str, selector: str, count: int) -> dict[str, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        context.route("**/api/gpu/events/stream*", _quiet_stream)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(url)
        handle = page.wait_for_function(DRAWN, arg=[selector, count], polling="raf",
                                        timeout=60_000)
        first_chart_ms = handle.json_value()
        page.wait_for_load_state("networkidle")  # the rest (the history's marks, ...)
        weight = page.evaluate(WEIGHT)
        if errors:
            raise RuntimeError(f"{url}: console errors {errors}")
        return {"first_chart_ms": first_chart_ms, **weight}
    finally:
        context.close()


def run(days: float, runs: int, warmup: int = 1) -> tuple[list[Figure], dict[str, Any]]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        raise SkipBenchmark(f"Chromium is not installed ({CHROMIUM})")
    from playwright.sync_api import sync_playwright

    db = month_log(days)
    started = time.perf_counter()
    api = Api(db, START_MS + round(days * 86_400_000))
    print(f"served {db.name}; rollups and incidents caught up in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    base = f"http://127.0.0.1:{api.server.effective_port}/"
    figures: list[Figure] = []
    raw: dict[str, Any] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                args=CHROMIUM_ARGS)
            try:
                for name, route, selector, count in scenarios(api, days):
                    print(f"measuring {name} ({route})", file=sys.stderr, flush=True)
                    for _ in range(warmup):  # warm the server's caches
                        measure(browser, base + route, selector, count)
                    results = [measure(browser, base + route, selector, count)
                               for _ in range(runs)]
                    raw[name] = results
                    figures.extend(_figures(name, results))
            finally:
                browser.close()
    finally:
        api.close()
    return figures, raw


def _figures(name: str, results: list[dict[str, Any]]) -> list[Figure]:
    times = [r["first_chart_ms"] for r in results]
    last = results[-1]
    total = last["files"] + last["data"]
    out = [
        Figure("dashboard", f"{name}: time to first chart", round(statistics.fmean(times), 1),
               "ms", p50=round(percentile(times, 0.5), 1), p99=round(percentile(times, 0.99), 1),
               n=len(times), note="navigation start to the chart drawn (cold browser context)"),
        Figure("dashboard", f"{name}: page weight", round(total / 1024, 1), "KiB",
               note=f"files {last['files'] / 1024:.1f} KiB + API data "
                    f"{last['data'] / 1024:.1f} KiB in {last['requests']} requests"),
    ]
    if last["history"]:
        history_ms = [ms for r in results for ms in r["history_ms"]]
        out.append(Figure("dashboard", f"{name}: history request", round(
            statistics.fmean(history_ms), 1), "ms", p50=round(percentile(history_ms, 0.5), 1),
            p99=round(percentile(history_ms, 0.99), 1), n=len(history_ms),
            note=f"{last['history'] / 1024:.1f} KiB of JSON (request sent to response end)"))
    return out


def render(figures: list[Figure]) -> str:
    rows = [["figure", "value", "p50", "p99", "n", "note"]]
    rows += [[f.name, f"{f.value:g} {f.unit}", "" if f.p50 is None else f"{f.p50:g}",
              "" if f.p99 is None else f"{f.p99:g}", "" if f.n is None else str(f.n), f.note]
             for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]])
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=30,
                        help="length of the log (30: the month; building it takes minutes)")
    parser.add_argument("--runs", type=int, default=5, help="page loads per page")
    parser.add_argument("--warmup", type=int, default=1,
                        help="page loads per page before those measured (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file written")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    try:
        figures, raw = run(args.days, args.runs, args.warmup)
    except SkipBenchmark as exc:
        print(f"skipped: {exc}")
        return 0
    print(render(figures))
    result = {"date": started.isoformat(timespec="seconds"),
              "command": "python -m bench.dashboard " + " ".join(argv or sys.argv[1:]),
              "days": args.days, "runs": args.runs, "machine": machine(),
              "figures": [f.to_dict() for f in figures], "raw": raw}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
