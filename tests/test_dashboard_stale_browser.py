"""The dashboard in a real browser says when what it shows is not current: a banner for
stopped monitoring and for a sampler that stopped ticking (from /healthz's freshness)."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from gpuhistory.config.layers import load_static
from tests.test_dashboard_browser import Page, browser  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.browser


def test_banner_when_monitoring_is_stopped_and_when_the_sampler_is_stale(
        browser, make_app) -> None:  # noqa: F811
    """Stopped: 'Monitoring is stopped: the values shown are not current.' A running
    sampler whose last tick is older than three intervals: the stale banner names the
    interval. Neither banner while the samples are current; no console error."""
    app = make_app(static=load_static(environ={"GPUHISTORY_MONITOR_INTERVAL": "600"}))
    page = Page(browser, app.url)
    try:
        page.open()
        expect(page.tab.locator("article.card")).to_have_count(4)
        expect(page.tab.locator("#banner-stale")).to_have_count(0)
        app.sampler.start()
        app.sampler.stop()
        page.tab.reload()
        expect(page.tab.locator("#banner-stale")).to_contain_text(
            "Monitoring is stopped: the values shown are not current.")
        expect(page.tab.locator("#banner-monitoring-stopped")).to_have_count(0)
        before = app.sampler.last_tick
        app.clock.advance(1)
        app.sampler.start()
        deadline = time.monotonic() + 10
        while app.sampler.last_tick is before:  # its first tick runs at once (bounded wait)
            assert time.monotonic() < deadline, "the first scheduled tick did not run"
            time.sleep(0.01)
        app.clock.advance(3600)
        page.tab.reload()
        expect(page.tab.locator("#banner-stale")).to_contain_text(
            "The sampler has not sampled for more than")
        expect(page.tab.locator("#banner-stale")).to_contain_text("it samples every")
        assert page.errors == []
    finally:
        app.sampler.stop()
        page.close()
