"""The leases page in a real browser (headless Chromium) shows what leases cover, what
their processes use, the leases exceeded, the memory no lease covers, and both events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from gpuhistory.clock import FakeClock
from tests.lease_rig import Rig
from tests.test_dashboard_browser import Page, browser  # noqa: F401 (the module's fixture)

pytestmark = pytest.mark.browser


@pytest.fixture
def rig(engine: sa.Engine, clock: FakeClock) -> Iterator[Rig]:
    built = Rig(engine, clock)
    yield built
    built.close()


@pytest.fixture
def page(browser, rig: Rig) -> Iterator[Page]:  # noqa: F811 (the imported fixture)
    tab = Page(browser, rig.url)
    yield tab
    tab.close()


def test_leases_page_shows_exceeded_leases_and_unleased_memory(rig: Rig, page: Page) -> None:
    """GPU 0: lease "train" covering pid 5001 (4000 MiB) whose process uses 5000 MiB is
    marked exceeded with its covers; GPU 1: 1000 MiB of an uncovered process while leases
    hold 75000 MiB is called out; the event log describes both events."""
    assert rig.allocate({"allocation_id": "train", "memory_mb": 4000, "gpu_id": 0,
                         "pids": [5001], "slurm_job": "4711"}).status_code == 201
    assert rig.allocate({"allocation_id": "big", "memory_mb": 75_000, "gpu_id": 1,
                         "pids": [5002]}).status_code == 201
    rig.run(0, (5001, 5000))
    rig.run(1, (5002, 70_000), (6001, 1000))
    rig.tick(times=2)
    page.open("#/leases")
    gpu0 = page.tab.locator('section.gpu-capacity[data-gpu="0"]')
    expect(gpu0.locator("tbody tr")).to_contain_text(["pid 5001 · job 4711"])
    expect(gpu0.locator(".lease-exceeded")).to_have_text("5,000 of 4,000 MiB: exceeded")
    gpu1 = page.tab.locator('section.gpu-capacity[data-gpu="1"]')
    expect(gpu1.locator(".lease-within")).to_have_text("70,000 of 75,000 MiB")
    expect(gpu1.locator(".unleased.error")).to_contain_text(
        "Processes no lease covers (pid 6001) use 1,000 MiB, while leases hold 90 %")
    page.tab.select_option("#event-kind", "lease_exceeded")
    log = page.tab.locator(".table-wrap").last.locator("tbody tr")
    expect(log).to_have_count(1)
    expect(log.first).to_contain_text("train: processes 5001 use 5,000 MiB, 4,000 MiB reserved")
    page.tab.select_option("#event-kind", "unleased_usage")
    expect(log.first).to_contain_text("1,000 MiB used by processes no lease covers (pids 6001)")
    page.screenshot("leases-accounting")
    assert page.errors == []
