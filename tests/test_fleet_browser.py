"""The fleet page in a real browser, on PostgreSQL: three simulated hosts x 8 GPUs, each its
own sampler and claim, one API answering as node-001. Screenshots go to shots/ (not
committed); ``python -m tests.sim_fleet`` serves 125 hosts x 8 GPUs to look at by hand."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from gpuhistory.clock import FakeClock
from tests.conftest import REPO
from tests.test_dashboard_browser import Page, browser  # noqa: F401  (the module's fixture)
from tests.test_fleet_api import Fleet

pytestmark = pytest.mark.browser

SHOTS = REPO / "shots"


def test_fleet_page_selects_hosts_sorts_gpus_and_marks_a_stale_host(
        browser, pg_engine: sa.Engine) -> None:  # noqa: F811
    """With several hosts the page opens on all of them: a cell per GPU grouped by host,
    coloured by effective state, the host whose sampler died marked stale (in the map and
    the hosts table). Sorting by temperature puts each host's hottest GPU first and the
    hottest host first. A cell opens that host's cards, whose badges agree with their
    advice; the host selector switches to one host and back; a phone-wide window does not
    scroll sideways. No console error."""
    SHOTS.mkdir(exist_ok=True)
    fleet = Fleet(pg_engine, FakeClock(), hosts=3)
    page = Page(browser, fleet.url)
    try:
        fleet.sim.tick(1, times=135)
        fleet.sim.stop(["node-002"])  # died holding its claim
        fleet.sim.tick(1, times=12)  # past stale_after (9 s at the 3-s interval)
        # node-001's GPU 5 left CRITICAL a few seconds ago: OPTIMAL by its sample, CRITICAL
        # by the advice (the critical pause), the case a badge must not contradict.
        page.open("#/fleet")
        expect(page.tab.locator(".fleet-host")).to_have_count(3)
        assert "host=*" in page.tab.url.replace("%2A", "*")
        cells = page.tab.locator(".gpu-cell")
        expect(cells).to_have_count(24)
        options = page.tab.locator("#fleet-host option")
        expect(options).to_have_count(4)
        expect(options.first).to_have_text("All hosts (3 hosts, 24 GPUs)")
        expect(options.nth(2)).to_have_text("node-002 · 8 GPUs · stale")
        stale = page.tab.locator('.fleet-host[data-host="node-002"]')
        expect(stale).to_have_class(re.compile(r"\bstale\b"))
        expect(stale.locator(".fleet-host-name")).to_have_text("⚠ node-002")
        expect(page.tab.locator('.fleet-host[data-host="node-001"]')).not_to_have_class(
            re.compile(r"\bstale\b"))
        rows = page.tab.locator(".fleet-hosts tbody tr")
        expect(rows).to_have_count(3)
        expect(rows.nth(1)).to_contain_text("stale: sampler stale")
        expect(rows.nth(0)).to_contain_text("live")
        # Each cell's colour is its effective state; the legend counts them.
        states = cells.evaluate_all("cs => cs.map(c => [c.dataset.state, c.className])")
        assert all(f"state-{s.lower()}" in cls for s, cls in states)
        assert {s for s, _ in states} >= {"OPTIMAL", "CRITICAL"}
        held = page.tab.locator('.fleet-host[data-host="node-001"] .gpu-cell[data-gpu="5"]')
        expect(held).to_have_class(re.compile(r"\bstate-critical\b.*\bheld\b"))
        expect(held).to_have_attribute("data-raw-state", "OPTIMAL")
        assert "CRITICAL (raw OPTIMAL)" in held.get_attribute("title")
        page.tab.screenshot(path=str(SHOTS / "fleet-3-hosts.png"))

        def temperatures() -> list[tuple[str, list[int]]]:
            return page.tab.locator(".fleet-host").evaluate_all(
                """hs => hs.map(h => [h.dataset.host, [...h.querySelectorAll('.gpu-cell')]
                    .map(c => Number(c.dataset.temperature))])""")

        before = temperatures()
        assert [name for name, _ in before] == ["node-001", "node-002", "node-003"]
        page.tab.select_option("#fleet-sort", "temperature")
        expect(page.tab.locator(".fleet-legend")).to_contain_text("temperature (°C)")
        after = temperatures()
        for _, temps in after:
            assert temps == sorted(temps, reverse=True)
        tops = [temps[0] for _, temps in after]
        assert tops == sorted(tops, reverse=True)
        assert sorted(t for _, ts in after for t in ts) == sorted(t for _, ts in before
                                                                  for t in ts)
        assert "sort=temperature" in page.tab.url
        page.tab.screenshot(path=str(SHOTS / "fleet-3-hosts-by-temperature.png"))

        # A cell opens its host's cards (another host than the API's: polled by host).
        hottest = page.tab.locator('.fleet-host[data-host="node-003"] .gpu-cell').first
        gpu = hottest.get_attribute("data-gpu")
        hottest.click()
        cards = page.tab.locator("article.card")
        expect(cards).to_have_count(8)
        expect(page.tab.locator("#fleet-host")).to_have_value("node-003")
        focused = page.tab.locator("article.card.focused")
        expect(focused).to_have_attribute("data-gpu", gpu)
        expect(focused.locator(".card-foot a")).to_have_attribute(
            "href", re.compile(r"^#/history/\d+\?host=node-003&uuid=GPU-sim-"))
        expect(cards.first.locator(".advice")).to_contain_text("Throttle advice")
        for card in cards.all():  # the badge is the state the advice follows
            badge = card.locator(".badge").inner_text()
            advice = card.locator(".advice").inner_text()
            assert f"({badge})" in advice, (badge, advice)
        expect(page.tab.locator(".host-summary tbody tr")).to_contain_text("node-003")
        page.tab.screenshot(path=str(SHOTS / "fleet-one-host.png"))
        # The selector: this server's own host (the live feed), then all hosts again.
        page.tab.select_option("#fleet-host", "node-001")
        expect(page.tab.locator(".host-summary tbody tr")).to_contain_text("node-001")
        expect(cards).to_have_count(8)
        gpu5 = page.tab.locator('article.card[data-gpu="5"]')
        expect(gpu5.locator(".badge")).to_have_text("CRITICAL")
        expect(gpu5.locator(".raw-state")).to_have_text("raw OPTIMAL")
        expect(gpu5.locator(".advice")).to_contain_text("\u00d7 0 (CRITICAL)")
        expect(gpu5).to_have_attribute("data-raw-state", "OPTIMAL")
        expect(page.tab.locator("article.card .raw-state")).to_have_count(1)
        gpu5.scroll_into_view_if_needed()
        page.tab.screenshot(path=str(SHOTS / "fleet-held-card.png"))
        page.tab.select_option("#fleet-host", "*")
        expect(page.tab.locator(".gpu-cell")).to_have_count(24)
        page.tab.set_viewport_size({"width": 390, "height": 800})  # a phone: no sideways scroll
        assert page.tab.evaluate(
            "document.documentElement.scrollWidth - window.innerWidth") <= 0
        page.tab.screenshot(path=str(SHOTS / "fleet-3-hosts-narrow.png"), full_page=True)
        assert page.errors == []
    finally:
        page.close()
        fleet.server.close()
