"""The incident report in a real browser (Debian's Chromium, headless, Playwright), opened
from disk with the network off, and printed to PDF on A4 and Letter.

The report is the one ``gpuhistory incidents report --db`` writes for fleet4's GPU 1
overheat (imported, with a lease granted during it). Its screenshot at 1280x800, full page,
and the PDFs with their first pages as PNG are written to build/screenshots/. Skips like the
dashboard's browser tests (no Chromium, no chart library) unless GPUHISTORY_REQUIRE_BROWSER=1;
the PDF checks need poppler-utils (pdftotext, pdfimages, pdftoppm).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.test_dashboard_browser import (
    SCREENSHOTS,
    TIMEZONE,
    VIEWPORT,
    WAIT_MS,
    Page,
    browser,  # noqa: F401 (the fixture)
)
from tests.test_incident_report import SECTIONS, cli_report, import_with_lease

pytestmark = pytest.mark.browser

MEMORY_RGB = (29, 78, 216)  # COLORS.memory in web/static/js/charts.js
LEASE_RGB = (14, 116, 144)  # COLORS.lease
POPPLER = ("pdftotext", "pdfimages", "pdftoppm")
# The printable width of each paper at the report's 12 mm margins, in CSS pixels (96/in).
PAPERS = {"A4": (210 - 24) / 25.4 * 96, "Letter": (215.9 - 24) / 25.4 * 96}


class ReportTab(Page):
    """A tab with the network off: every request but the report file itself is refused
    and recorded."""

    def __init__(self, browser, path: Path) -> None:  # noqa: F811
        self.context = browser.new_context(viewport=VIEWPORT, timezone_id=TIMEZONE,
                                           locale="en-GB", offline=True)
        self.url = path.resolve().as_uri()
        self.requests: list[str] = []

        def refuse(route) -> None:
            if route.request.url == self.url:
                route.continue_()
            else:
                self.requests.append(route.request.url)
                route.abort()

        self.context.route("**/*", refuse)
        self.tab = self.context.new_page()
        self.tab.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.tab.on("console", lambda m: m.type in ("error", "warning")
                    and self.errors.append(f"{m.type}: {m.text}"))
        self.tab.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.tab.on("request", lambda r: r.url != self.url and self.requests.append(r.url))


@pytest.fixture
def report_file(engine: sa.Engine, db_url: str, tmp_path: Path) -> Path:
    want = import_with_lease(engine)
    path = tmp_path / f"incident-{want['id']}.html"
    result = cli_report(db_url, want["id"], "-o", str(path))
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def report_tab(browser, report_file: Path) -> Iterator[ReportTab]:  # noqa: F811
    tab = ReportTab(browser, report_file)
    yield tab
    tab.context.close()


def _poppler() -> None:
    missing = [tool for tool in POPPLER if shutil.which(tool) is None]
    if missing:
        reason = f"poppler-utils is not installed ({', '.join(missing)}): apt-get install " \
                 "poppler-utils"
        if os.environ.get("GPUHISTORY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GPUHISTORY_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def test_report_opens_offline_with_the_chart_drawn(report_tab: ReportTab) -> None:
    """Opened from disk with the network off: no request is attempted, nothing is logged
    as an error or warning (a refused inline block would be), the timeline, memory and
    lease band have drawn data, every section is there, and every UTC time has the
    viewer's local time (Berlin: UTC+01:00) beside it."""
    tab = report_tab.tab
    tab.goto(report_tab.url)
    tab.wait_for_selector("body[data-charts=drawn]")
    assert report_tab.drawn_pixels("#incident-timeline") > 200
    assert report_tab.drawn_pixels("#incident-memory", MEMORY_RGB) > 200
    assert report_tab.drawn_pixels("#incident-bands", LEASE_RGB) > 50
    points = tab.get_attribute("#incident-timeline", "data-points")
    assert points is not None and int(points) > 50
    for section in SECTIONS:
        assert tab.locator(f"#{section}").inner_text().strip(), section
    utc = tab.locator("time.utc")
    assert utc.count() > 10 and tab.locator("time.utc + .local").count() == utc.count()
    start = tab.locator("#card time.utc").first
    assert start.inner_text() == "2026-01-01 00:02:01.500 UTC"
    assert start.locator("xpath=following-sibling::span[1]").inner_text() == (
        "2026-01-01 01:02:01 UTC+01:00")
    assert "Europe/Berlin, UTC+01:00" in tab.locator("#local-zone").inner_text()
    tab.screenshot(path=str(SCREENSHOTS / "report.png"))
    tab.screenshot(path=str(SCREENSHOTS / "report-full.png"), full_page=True)
    assert report_tab.requests == []
    assert report_tab.errors == []


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_report_prints_with_the_whole_chart_on_page_one(report_tab: ReportTab,
                                                        paper: str) -> None:
    """Printed to PDF, the whole figure, from its caption to the note under the last chart,
    is on page 1 with its three canvases rasterised there; the card's facts are not cut
    across pages; and in the print layout the canvases fit the paper's width (scaled to
    it, not cut)."""
    _poppler()
    tab = report_tab.tab
    tab.goto(report_tab.url)
    tab.wait_for_selector("body[data-charts=drawn]")
    pdf = SCREENSHOTS / f"report-{paper.lower()}.pdf"
    tab.pdf(path=str(pdf), format=paper, print_background=True)
    first = _run("pdftotext", "-f", "1", "-l", "1", "-layout", str(pdf), "-")
    flat = " ".join(first.split())
    assert "Figure 1. GPU 1 from 10 min before the incident" in flat
    assert "Bands, from the top: each lease active" in flat  # the note under the last chart
    assert flat.startswith("GPUHISTORY INCIDENT REPORT Incident #")
    # A short section moves to the next page whole: the card's first and last rows together.
    pages = [" ".join(_run("pdftotext", "-f", str(n), "-l", str(n), "-layout", str(pdf),
                           "-").split()) for n in (1, 2)]
    [card_page] = [text for text in pages if "The card and the incident" in text]
    assert "Name —" in card_page and "Memory used max" in card_page
    images = [line.split() for line in _run("pdfimages", "-list", "-f", "1", "-l", "1",
                                             str(pdf)).splitlines()[2:]]
    canvases = [row for row in images if row[2] == "image" and int(row[3]) >= 500]
    assert len(canvases) == 3, images
    _run("pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", str(pdf),
         str(SCREENSHOTS / f"report-{paper.lower()}-page1"))
    # The print layout at this paper's printable width: every canvas inside the page.
    tab.set_viewport_size({"width": round(PAPERS[paper]), "height": 1000})
    tab.emulate_media(media="print")
    widths = tab.evaluate("""() => [...document.querySelectorAll("figure canvas")].map((c) => {
        const r = c.getBoundingClientRect();
        return [r.left, r.right, document.documentElement.clientWidth];
    })""")
    assert len(widths) == 3
    for left, right, page_width in widths:
        assert left >= 0 and right <= page_width + 0.5 and right - left > 0.9 * page_width
    assert report_tab.requests == [] and report_tab.errors == []

