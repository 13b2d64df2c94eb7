"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright,
against the real server replaying fleet4_derived.csv with a fake clock.

What each test proves is in its docstring. Screenshots of every page at 1280x800 (and the
fleet in a narrow window) are written to build/screenshots/ and the folder is printed at the
end of the run. Without Chromium (or without the shipped chart library, web/vendor/uplot/)
these tests skip with the reason — unless GPUHISTORY_REQUIRE_BROWSER=1 (CI), when they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.assets import VENDOR, vendor_file
from gpuhistory.sampling.sim import SIM_PID_BASE
from tests.conftest import REPO
from tests.fake_proc import FakeProc

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "build" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
TIMEZONE = "Europe/Berlin"  # UTC+01:00 on the fake clock's 2026-01-01
WAIT_MS = 10_000
TEMPERATURE_RGB = (194, 65, 12)  # COLORS.temperature in web/static/js/charts.js


def _unavailable_reason() -> str | None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return f"Chromium is not installed ({CHROMIUM}): apt-get install chromium"
    missing = [name for name in VENDOR if not vendor_file(name).is_file()]
    if missing:
        return f"the dashboard's library is missing ({missing}): git checkout web/vendor"
    return None


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[object]:
    """One headless Chromium for the module (each test gets a fresh context)."""
    reason = _unavailable_reason()
    if reason is not None:
        if os.environ.get("GPUHISTORY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GPUHISTORY_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ndashboard screenshots: {SCREENSHOTS}")


class Page:
    """A browser tab on the app, collecting console errors and uncaught exceptions."""

    def __init__(self, browser, base_url: str) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport=VIEWPORT, timezone_id=TIMEZONE,
                                           locale="en-GB")
        self.tab = self.context.new_page()
        self.tab.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.tab.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.tab.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def open(self, route: str = "#/fleet") -> None:
        self.tab.goto(f"{self.base_url}/{route}")

    def screenshot(self, name: str) -> None:
        self.tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"))

    def drawn_pixels(self, selector: str, rgb: tuple[int, int, int] = TEMPERATURE_RGB) -> int:
        """Canvas pixels of the given colour in the first chart under ``selector``: a chart
        whose series drew data has many, an empty chart none."""
        return self.tab.evaluate("""([selector, [r, g, b]]) => {
            const canvas = document.querySelector(selector + " canvas");
            if (!canvas) return 0;
            const {data} = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
            let count = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] > 200 && Math.abs(data[i] - r) + Math.abs(data[i + 1] - g)
                    + Math.abs(data[i + 2] - b) < 60) count++;
            }
            return count;
        }""", [selector, list(rgb)])

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, app) -> Iterator[Page]:
    tab = Page(browser, app.url)
    yield tab
    tab.close()


def test_fleet_shows_every_gpu_and_follows_the_trace_live(app, page: Page) -> None:
    """Every GPU has a card with its readings, the simulated backend is announced, the
    sparkline draws, and GPU 1's badge changes when the replayed trace crosses 75 °C —
    without reloading (the event stream, then the status poll), with no console error."""
    app.tick(1, times=20)  # t = 20 s: GPU 1 still OPTIMAL (NORMAL at 22 s, THROTTLED at 26 s)
    page.open()
    cards = page.tab.locator("article.card")
    expect(cards).to_have_count(4)
    expect(page.tab.locator("#banner-simulated")).to_contain_text("Simulated backend")
    gpu1 = page.tab.locator('article.card[data-gpu="1"]')
    expect(gpu1.locator(".badge")).to_have_text("OPTIMAL")
    expect(gpu1.locator('[data-field="temperature"]')).to_contain_text("°C")
    expect(page.tab.locator("#zone")).to_contain_text("UTC+01:00")
    spark = gpu1.locator(".spark")
    expect(spark).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    assert int(spark.get_attribute("data-points")) >= 2  # 20 s of samples, in 10-s buckets
    assert page.drawn_pixels('article.card[data-gpu="1"] .spark') > 20
    expect(page.tab.locator("#live-mode")).to_have_text("live (event stream)")
    app.tick(1, times=10)  # t = 30 s: 75 °C and more
    expect(gpu1.locator(".badge")).to_have_text("THROTTLED")
    expect(gpu1).to_have_attribute("data-state", "THROTTLED")
    expect(gpu1.locator(".advice")).to_contain_text("\u00d7 0.5")  # the multiplier
    expect(gpu1.locator(".chips")).to_contain_text("SW power cap")
    page.screenshot("fleet")
    assert page.errors == []


def test_history_chart_draws_buckets_thresholds_and_marks(app, page: Page) -> None:
    """The history page charts GPU 1 from the history API's buckets (the chart's canvas has
    the temperature drawn), lists the state transitions and the lease grant marked on the
    time axis, and the range presets and keyboard zoom fetch again."""
    lease = requests.post(f"{app.url}/api/gpu/memory/allocate", json={
        "allocation_id": "train-42", "memory_mb": 20480, "gpu_id": 1, "owner": "alice",
        "ttl_seconds": 600}, timeout=5)
    assert lease.status_code == 201
    app.tick(1, times=240)
    page.open("#/history/1?range=15m&series=power")
    chart = page.tab.locator(".chart")
    expect(chart).to_have_attribute("data-resolution", "raw")
    assert int(chart.get_attribute("data-points")) > 100
    assert page.drawn_pixels(".chart") > 200
    info = page.tab.locator(".chart-info")
    expect(info).to_contain_text("5 state transitions")
    expect(info).to_contain_text("1 lease grants")
    page.tab.locator(".marks summary").click()
    marks = page.tab.locator(".marks tbody tr")
    expect(marks).to_have_count(6)
    expect(marks.nth(1)).to_contain_text("lease granted: train-42")
    expect(marks.nth(4)).to_contain_text("THROTTLED → CRITICAL")
    page.screenshot("history")
    page.tab.get_by_role("button", name="30 d").click()
    expect(page.tab.get_by_role("button", name="30 d")).to_have_attribute("aria-pressed", "true")
    expect(info).to_contain_text("resolution")
    assert "range=30d" in page.tab.url
    page.tab.get_by_role("button", name="15 min").focus()
    page.tab.keyboard.press("Enter")
    expect(page.tab.get_by_role("button", name="15 min")).to_have_attribute(
        "aria-pressed", "true")
    page.tab.get_by_role("button", name="In", exact=True).focus()
    page.tab.keyboard.press("Enter")
    expect(info).to_contain_text("zoomed")
    assert "since=" in page.tab.url
    assert page.errors == []


def test_incident_list_and_postmortem(app, page: Page) -> None:
    """GPU 1's overheat is listed; its page has the summary written from the data (in local
    time), the timeline, memory and bands charts, and the report, JSON and CSV downloads
    that work."""
    requests.post(f"{app.url}/api/gpu/memory/allocate", json={
        "allocation_id": "train-42", "memory_mb": 20480, "gpu_id": 1, "owner": "alice",
        "ttl_seconds": 600}, timeout=5).raise_for_status()
    app.tick(1, times=230)
    IncidentDetector(app.engine, app.clock, app.config).run()
    page.open("#/incidents")
    rows = page.tab.locator(".incident-list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("GPU 1")
    expect(rows.first).to_contain_text("overheat")
    expect(rows.first).to_contain_text("90 °C")
    page.screenshot("incidents")
    rows.first.get_by_role("link").click()
    summary = page.tab.locator("#incident-summary")
    expect(summary).to_contain_text("GPU 1 was above 85 °C for 1 min 16 s")
    # 00:02:49 UTC, shown in the viewer's zone (Berlin, UTC+01:00)
    expect(summary).to_contain_text("peaking at 90 °C at 01:02:49")
    expect(summary).to_contain_text("UTC+01:00")
    expect(summary).to_contain_text("SW power cap")
    expect(summary).to_contain_text("Leases active: train-42 (alice, 20,480 MiB)")
    expect(summary).to_contain_text("Running on the GPU: python3 (pid 4201, ")  # no owner
    timeline = page.tab.locator("#incident-timeline")
    expect(timeline).to_have_attribute("data-points", re.compile(r"^[1-9]\d+$"))
    assert page.drawn_pixels("#incident-timeline") > 200
    assert page.drawn_pixels(".chart.band", (14, 116, 144)) > 50  # the lease's band
    expect(page.tab.locator("#incident-memory")).to_have_attribute(
        "data-points", timeline.get_attribute("data-points"))
    assert page.drawn_pixels("#incident-memory", (29, 78, 216)) > 50  # memory used
    json_link = page.tab.get_by_role("link", name="post-mortem (JSON)")
    csv_link = page.tab.get_by_role("link", name="every sample (CSV)")
    doc = page.tab.request.get(f"{app.url}{json_link.get_attribute('href')}").json()
    assert doc["gpu_id"] == 1 and doc["summary"]
    csv = page.tab.request.get(f"{app.url}{csv_link.get_attribute('href')}")
    assert csv.ok and csv.headers["content-type"].startswith("text/csv")
    assert csv.text().splitlines()[0].startswith("gpu_id,")
    report_button = page.tab.get_by_role("link", name="Download report")
    assert report_button.get_attribute("download") == f"incident-{doc['id']}.html"
    report = page.tab.request.get(f"{app.url}{report_button.get_attribute('href')}")
    assert report.ok and report.headers["content-type"].startswith("text/html")
    assert report.headers["content-disposition"].startswith("attachment")
    assert f"Incident #{doc['id']}" in report.text()
    page.screenshot("incident")
    assert page.errors == []


def test_leases_with_capacity_and_the_event_log(app, page: Page) -> None:
    """Active leases per GPU with their capacity; the event log filters by kind and shows
    a new event as it happens."""
    requests.post(f"{app.url}/api/gpu/memory/allocate", json={
        "allocation_id": "train-42", "memory_mb": 20480, "gpu_id": 1, "owner": "alice",
        "ttl_seconds": 600}, timeout=5).raise_for_status()
    app.tick(1, times=30)
    page.open("#/leases")
    gpu1 = page.tab.locator('section.gpu-capacity[data-gpu="1"]')
    expect(gpu1.locator("tbody tr")).to_contain_text(["train-42"])
    expect(gpu1.locator(".cap-text")).to_contain_text("Leased 20,480 of 81,047 MiB")
    expect(gpu1.locator(".time-left")).to_contain_text("min")
    log = page.tab.locator(".table-wrap").last.locator("tbody tr")
    expect(log.first).not_to_contain_text("No events")
    page.tab.select_option("#event-kind", "lease_granted")
    expect(log).to_have_count(1)
    expect(log.first).to_contain_text("train-42")
    requests.post(f"{app.url}/api/gpu/memory/allocate", json={
        "allocation_id": "eval-7", "memory_mb": 4096, "gpu_id": 0, "owner": "bob"},
        timeout=5).raise_for_status()
    expect(log).to_have_count(2)
    expect(log.first).to_contain_text("eval-7")
    gpu0 = page.tab.locator('section.gpu-capacity[data-gpu="0"]')
    expect(gpu0.locator("tbody")).to_contain_text("eval-7")
    expect(gpu0.locator(".cap-text")).to_contain_text("Leased 4,096 of 81,047 MiB")
    page.screenshot("leases")
    assert page.errors == []


def test_connection_lost_banner(app, page: Page) -> None:
    """When the server stops, a banner says the connection is lost."""
    page.open()
    expect(page.tab.locator("article.card")).to_have_count(4)
    expect(page.tab.locator("#banner-connection-lost")).to_have_count(0)
    app.server.close()
    banner = page.tab.locator("#banner-connection-lost")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Connection to the server lost")
    expect(page.tab.locator("#live-mode")).to_have_text("offline")
    page.screenshot("connection-lost")


def test_unavailable_gpu_banner(app, page: Page) -> None:
    """A GPU the server reports as UNAVAILABLE gets a grey card and a banner naming it.
    (The answer of /api/gpu/status/all is the server's, with GPU 2 marked lost on the way:
    the simulator has no lost GPU to replay.)"""

    def lose_gpu_2(route) -> None:
        response = route.fetch()
        body = response.json()
        for gpu in body["gpus"]:
            if gpu["gpu_id"] == 2:
                gpu.update(available=False, state="UNAVAILABLE")
        route.fulfill(response=response, json=body)

    page.context.route("**/api/gpu/status/all", lose_gpu_2)
    page.open()
    expect(page.tab.locator("#banner-gpu-unavailable")).to_have_text(
        "GPU 2 is unavailable (not detected, lost, or NVML failing).")
    card = page.tab.locator('article.card[data-gpu="2"]')
    expect(card).to_have_class(re.compile(r"\bunavailable\b"))
    expect(card.locator(".badge")).to_have_text("UNAVAILABLE")
    assert page.errors == []


def test_narrow_window_and_keyboard(app, page: Page) -> None:
    """In a phone-wide window nothing overflows sideways; the pages can be reached with
    the keyboard alone (skip link first, then the navigation)."""
    app.tick(1, times=30)
    page.tab.set_viewport_size({"width": 390, "height": 800})
    page.open()
    expect(page.tab.locator("article.card")).to_have_count(4)
    overflow = page.tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.tab.screenshot(path=str(SCREENSHOTS / "fleet-narrow.png"), full_page=True)
    page.tab.keyboard.press("Tab")
    assert page.tab.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(4):  # brand, Fleet, History, Incidents
        page.tab.keyboard.press("Tab")
    assert page.tab.evaluate("document.activeElement.textContent") == "Incidents"
    page.tab.keyboard.press("Enter")
    expect(page.tab.locator("h1")).to_have_text("Incidents")
    assert page.tab.url.endswith("#/incidents")
    page.open("#/history/1?range=1h")
    expect(page.tab.locator(".chart")).to_have_attribute("data-resolution", "raw")
    overflow = page.tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.tab.screenshot(path=str(SCREENSHOTS / "history-narrow.png"), full_page=True)
    assert page.errors == []


def test_a_card_shows_who_is_on_the_gpu(make_app, browser, tmp_path: Path) -> None:
    """A busy GPU's card lists its process with the user, the Slurm job and the memory it
    holds; an idle GPU's card says none runs. The processes' owners come from a fake /proc
    tree (alice's job 4711 on GPU 1); and the incident page names them too."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(SIM_PID_BASE + 1, uid=1000, cgroup=["4:memory:/slurm/uid_1000/job_4711/step_0"])
    app = make_app(proc=proc.reader())
    app.tick(1, times=30)  # GPUs 0 and 1 are busy from 20 s; GPU 3 stays idle
    tab = Page(browser, app.url)
    try:
        tab.open()
        line = tab.tab.locator('article.card[data-gpu="1"] .procs li.proc')
        expect(line).to_have_count(1)
        expect(line).to_contain_text("alice")
        expect(line).to_contain_text("job 4711.0")
        expect(line).to_contain_text(re.compile(r"[\d,]+ MiB"))
        expect(tab.tab.locator('article.card[data-gpu="3"] .procs')).to_contain_text(
            "no compute processes")
        expect(tab.tab.locator('article.card[data-gpu="0"] .proc-user')).to_have_text("?")
        tab.screenshot("fleet-processes")
        assert tab.errors == []
    finally:
        tab.close()


def test_the_dashboard_benchmark_runs(tmp_path: Path, browser) -> None:
    """``python -m bench.dashboard`` runs end to end on a short log and writes its figures
    (a smoke test: nothing here is timed or judged)."""
    out = tmp_path / "dashboard.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.dashboard", "--days", "0.02", "--runs", "1",
         "--warmup", "0", "--out", str(out)],
        cwd=REPO, text=True, capture_output=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].split()[:2] == ["figure", "value"]
    data = json.loads(out.read_text())
    names = {f["name"] for f in data["figures"]}
    assert {"history, 15 min: time to first chart", "history, 24 h: page weight",
            "fleet, 8 sparklines: time to first chart"} <= names
    assert data["machine"]["cpus"] and data["days"] == 0.02
