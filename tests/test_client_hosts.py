"""The Python client speaks for one fleet host (``Client(host=...)``) or all (``"*"``),
against one database that two hosts' samplers write."""

from __future__ import annotations

import pytest

from gpuhistory.client import ApiError, Client
from gpuhistory.config.layers import load_static
from gpuhistory.config.store import ConfigStore
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.sampling.sim import SimBackend
from gpuhistory.storage.log import LogStore
from tests.conftest import H100_BURN

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_hosts(app):
    """``app`` samples 4 GPUs as "testhost"; a second sampler writes 1 GPU as "other"."""
    config = ConfigStore(app.engine, load_static(environ={}), app.clock, refresh_ms=0)
    store = LogStore(app.engine, "other")
    sampler = Sampler(SimBackend(app.clock, trace=H100_BURN), Pipeline(store, "sim", config),
                      store, app.clock, interval=lambda: config().monitor_interval)
    sampler.tick()
    yield app
    sampler.stop()


def test_status_and_leases_per_host_and_for_the_fleet(two_hosts) -> None:
    app = two_hosts
    mine, other = Client(app.url), Client(app.url, host="other")
    assert mine.status_all()["count"] == 4 and other.status_all()["count"] == 1
    fleet = mine.status_all(host="*")
    assert fleet["count"] == 5
    assert sorted({g["host"] for g in fleet["gpus"]}) == ["other", "testhost"]
    assert other.status(0)["host"] == "other"

    before = mine.available(0)["available_mb"]
    lease = other.allocate("other-job", 4096, gpu_id=0, ttl_seconds=600, owner="carol")
    assert other.available(0)["leased_mb"] == 4096
    assert mine.available(0)["available_mb"] == before  # the other host's GPU 0
    assert [x["allocation_id"] for x in other.leases()] == ["other-job"]
    assert mine.leases() == []
    assert [x["allocation_id"] for x in mine.leases(host="*")] == ["other-job"]
    with pytest.raises(ApiError) as missing:
        mine.renew("other-job", lease["lease_token"])  # it is not this host's lease
    assert missing.value.status == 404
    assert other.deallocate("other-job", lease["lease_token"])["status"] == "released"


def test_an_unknown_host_is_404(two_hosts) -> None:
    with pytest.raises(ApiError) as unknown:
        Client(two_hosts.url, host="nowhere").status(0)
    assert unknown.value.status == 404 and unknown.value.code == "gpu_not_found"
