"""GET /metrics beyond the basics: no stale values served as current, the dcgm-exporter
families (``metrics_dcgm``), and what the hardware says (XIDs, ECC, row remapping, PCIe
replays, energy, per-process memory) — over real HTTP, with a fake clock."""

from __future__ import annotations

import time

import requests

from gpuhistory.config.layers import load_static
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.storage.log import LogStore
from tests.fake_pynvml import FakeNvml, scenario
from tests.test_metrics_endpoint import scrape_url

MIB = 1024 * 1024
DCGM_LABELS = {"gpu", "UUID", "device", "modelName", "Hostname"}


def scrape(url: str) -> tuple[str, dict[str, list]]:
    """The body and its samples by sample name (as the official parser names them)."""
    response, by_name = scrape_url(url)
    return response.text, by_name


def by_gpu(samples: dict[str, list], name: str, **match: str) -> dict[int, float]:
    """``name``'s value by GPU (the Python parser names a bare counter's samples _total)."""
    found = samples.get(name) or samples.get(f"{name}_total", [])
    return {int(s.labels["gpu"]): s.value for s in found
            if all(s.labels.get(k) == v for k, v in match.items())}


def health(url: str) -> dict:
    return requests.get(f"{url}/healthz", timeout=10).json()


# -- no stale truth ------------------------------------------------------------------------
def test_stopped_monitoring_serves_no_current_values(make_app) -> None:
    """After monitoring is stopped: no readings, states or advice; available 0 for every
    GPU, their sample age, gpuhistory_sampler_stale{reason="monitoring_stopped"} 1, and
    /healthz degraded naming monitoring_stopped."""
    app = make_app(static=load_static(environ={"GPUHISTORY_MONITOR_INTERVAL": "600"}))
    _, samples = scrape(app.url)
    assert len(samples["gpuhistory_gpu_temperature_celsius"]) == 4  # never started: served
    app.sampler.start()
    assert app.sampler.stop()
    app.clock.advance(5)
    _, samples = scrape(app.url)
    assert "gpuhistory_gpu_temperature_celsius" not in samples
    assert "gpuhistory_gpu_state" not in samples
    assert "gpuhistory_gpu_throttle_multiplier" not in samples
    assert by_gpu(samples, "gpuhistory_gpu_available") == dict.fromkeys(range(4), 0.0)
    ages = by_gpu(samples, "gpuhistory_gpu_sample_age_seconds")
    assert set(ages) == {0, 1, 2, 3} and min(ages.values()) > 4.9
    stale = {s.labels["reason"]: s.value for s in samples["gpuhistory_sampler_stale"]}
    assert stale == {"monitoring_stopped": 1.0, "sampler_stale": 0.0}
    body = health(app.url)
    assert body["status"] == "degraded" and body["freshness"]["reason"] == "monitoring_stopped"
    assert any(r.startswith("monitoring_stopped:") for r in body["reasons"]), body["reasons"]


def test_a_restart_that_honours_a_stop_request_serves_no_current_values(app) -> None:
    """A process whose sampler is not running because the log's newest operator request
    is a stop (as after a restart): monitoring_stopped, no values served as current."""
    app.store.append_events([EventDraft(kind=EventKind.MONITORING_STOPPED,
                                        ts_ms=app.clock.now_ms(),
                                        payload={"reason": "requested over the API",
                                                 "requested_by": "api"})])
    _, samples = scrape(app.url)
    assert "gpuhistory_gpu_temperature_celsius" not in samples
    stale = {s.labels["reason"]: s.value for s in samples["gpuhistory_sampler_stale"]}
    assert stale["monitoring_stopped"] == 1.0
    assert health(app.url)["freshness"]["reason"] == "monitoring_stopped"


def test_a_sampler_that_stops_ticking_is_stale_after_three_intervals(make_app) -> None:
    """A running sampler whose last tick is older than three intervals (here 600 s): its
    values are dropped and health names sampler_stale; just under it they are current."""
    app = make_app(static=load_static(environ={"GPUHISTORY_MONITOR_INTERVAL": "600"}))
    before = app.sampler.last_tick
    app.clock.advance(1)
    app.sampler.start()  # the first tick runs at once; the next one 600 real seconds later
    try:
        deadline = time.monotonic() + 10
        while app.sampler.last_tick is before:  # the scheduler's first tick (bounded wait)
            assert time.monotonic() < deadline, "the first scheduled tick did not run"
            time.sleep(0.01)
        app.clock.advance(1799)
        _, samples = scrape(app.url)
        assert len(samples["gpuhistory_gpu_temperature_celsius"]) == 4
        assert health(app.url)["status"] == "ok"
        app.clock.advance(2)
        _, samples = scrape(app.url)
        assert "gpuhistory_gpu_temperature_celsius" not in samples
        assert by_gpu(samples, "gpuhistory_gpu_available") == dict.fromkeys(range(4), 0.0)
        stale = {s.labels["reason"]: s.value for s in samples["gpuhistory_sampler_stale"]}
        assert stale == {"monitoring_stopped": 0.0, "sampler_stale": 1.0}
        body = health(app.url)
        assert body["status"] == "degraded" and body["freshness"]["reason"] == "sampler_stale"
        assert body["freshness"]["stale_after_seconds"] == 1800
    finally:
        app.sampler.stop()


# -- dcgm-exporter names -------------------------------------------------------------------
def test_dcgm_families_with_the_setting(make_app) -> None:
    """With GPUHISTORY_METRICS_DCGM=1 each field has dcgm-exporter's name, unit (MHz, MiB,
    W, °C, %) and labels, one series per GPU (off by default: the runtime test below)."""
    app = make_app(static=load_static(environ={"GPUHISTORY_METRICS_DCGM": "1"}))
    app.tick(5, times=10)
    text, samples = scrape(app.url)
    status = {g["gpu_id"]: g for g in requests.get(f"{app.url}/api/gpu/status/all",
                                                    timeout=10).json()["gpus"]}
    for name in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED",
                 "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK",
                 "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_XID_ERRORS",
                 "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_POWER_VIOLATION",
                 "DCGM_FI_DEV_THERMAL_VIOLATION"):
        series = samples.get(name) or samples[f"{name}_total"]
        assert {int(s.labels["gpu"]) for s in series} == {0, 1, 2, 3}, name
        for s in series:
            assert set(s.labels) >= DCGM_LABELS, (name, s.labels)
            doc = status[int(s.labels["gpu"])]
            assert (s.labels["UUID"], s.labels["modelName"], s.labels["Hostname"],
                    s.labels["device"]) == (doc["uuid"], doc["name"], "testhost",
                                            f"nvidia{doc['gpu_id']}")
    for s in samples["DCGM_FI_DEV_GPU_TEMP"]:
        m = status[int(s.labels["gpu"])]["metrics"]
        assert s.value == m["temperature_celsius"]
        assert by_gpu(samples, "DCGM_FI_DEV_FB_USED")[int(s.labels["gpu"])] == \
            m["memory_used_mb"]
        assert by_gpu(samples, "DCGM_FI_DEV_SM_CLOCK")[int(s.labels["gpu"])] == \
            m["sm_clock_mhz"]
        assert by_gpu(samples, "DCGM_FI_DEV_GPU_UTIL")[int(s.labels["gpu"])] == \
            m["load_percent"]
    assert set(by_gpu(samples, "DCGM_FI_DEV_XID_ERRORS").values()) == {0.0}
    # dcgm-exporter's counters keep their bare names (no _total) and say counter.
    assert "# TYPE DCGM_FI_DEV_POWER_VIOLATION counter\n" in text
    assert "\nDCGM_FI_DEV_POWER_VIOLATION{" in text
    assert "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n" in text


def test_dcgm_setting_changes_at_runtime(app) -> None:
    """metrics_dcgm is off by default, and a setting like the others: PUT /api/gpu/config
    turns it on and off; a value that is not a boolean is refused."""
    assert "DCGM_FI_" not in scrape(app.url)[0]
    put = requests.put(f"{app.url}/api/gpu/config", json={"metrics_dcgm": True}, timeout=10)
    assert put.status_code == 200, put.text
    assert "DCGM_FI_DEV_GPU_TEMP{" in scrape(app.url)[0]
    bad = requests.put(f"{app.url}/api/gpu/config", json={"metrics_dcgm": "yes"}, timeout=10)
    assert bad.status_code in (400, 422)
    requests.put(f"{app.url}/api/gpu/config", json={"metrics_dcgm": False}, timeout=10)
    assert "DCGM_FI_" not in scrape(app.url)[0]


def test_stale_gpus_have_no_dcgm_values(make_app) -> None:
    """The DCGM gauges follow the same rule: none while monitoring is stopped."""
    app = make_app(static=load_static(environ={"GPUHISTORY_METRICS_DCGM": "1",
                                               "GPUHISTORY_MONITOR_INTERVAL": "600"}))
    app.sampler.start()
    app.sampler.stop()
    _, samples = scrape(app.url)
    assert not any(name.startswith("DCGM_FI_DEV_GPU_TEMP") for name in samples)


# -- what the hardware says, through the NVML backend -----------------------------------
def test_hardware_counters_and_process_memory(engine, clock, live_api) -> None:
    """ECC, remapped rows, PCIe replays and energy (J) per GPU where NVML gives them; the
    XID counter counts the log's xid events; each running compute process's memory has
    its pid, name and user; the rtx card, which has no ECC, has no ECC series."""
    import os

    import psutil

    from gpuhistory.context import ServiceContext
    from gpuhistory.sampling.procinfo import Owner, ProcReader

    nvml = FakeNvml([scenario("one_h100").devices[0], scenario("one_rtx4090").devices[0]])
    nvml.devices[0].processes = [(os.getpid(), 3000 * MIB), (4_000_000, None)]
    nvml.devices[0].ecc = {(0, 0): 3, (1, 0): 1, (0, 1): 40, (1, 1): 2}
    nvml.devices[0].remapped_rows = (5, 1, 0, 0)
    nvml.devices[0].pcie_replays = 17
    backend = NvmlBackend(nvml=nvml, clock=clock, process_names=True)
    store = LogStore(engine, "testhost")
    static = load_static(environ={"GPUHISTORY_METRICS_DCGM": "1"})
    pipeline = Pipeline(store, "nvml", static.config)
    sampler = Sampler(backend, pipeline, store, clock, interval=3.0)
    try:
        sampler.tick()
        nvml.xid(1, 79)
        clock.advance(3)
        sampler.tick()
        from gpuhistory.api.app import create_app
        from tests.conftest import LiveServer
        server = LiveServer(create_app(ServiceContext(
            engine=engine, host="testhost", clock=clock, config=static.config,
            sampler=sampler)))
        try:
            text, samples = scrape(server.url)
        finally:
            server.close()
    finally:
        backend.close()
    ecc = {(int(s.labels["gpu"]), s.labels["type"], s.labels["counter"]): s.value
           for s in samples["gpuhistory_gpu_ecc_errors_total"]}
    assert ecc == {(0, "corrected", "volatile"): 3, (0, "uncorrected", "volatile"): 1,
                   (0, "corrected", "aggregate"): 40, (0, "uncorrected", "aggregate"): 2}
    rows = {s.labels["kind"]: s.value for s in samples["gpuhistory_gpu_remapped_rows"]}
    assert rows == {"correctable": 5, "uncorrectable": 1, "pending": 0}
    assert by_gpu(samples, "gpuhistory_gpu_pcie_replays_total") == {0: 17}
    assert by_gpu(samples, "gpuhistory_gpu_energy_joules_total") == {
        0: 123_456.789, 1: 123_456.789}
    assert by_gpu(samples, "gpuhistory_gpu_xid_errors_total") == {0: 0, 1: 1}
    (process,) = samples["gpuhistory_process_memory_bytes"]  # unknown memory: no series
    me = psutil.Process()
    here = ProcReader().owner(os.getpid()) or Owner()  # where this test runs (real /proc)
    assert process.labels == {"gpu": "0", "uuid": "GPU-fake-h100-0000", "host": "testhost",
                              "pid": str(os.getpid()), "name": me.name(),
                              "user": me.username(), "job": here.slurm_job_id or "",
                              "container": here.container_id or "",
                              "pod": here.pod_uid or "", "unit": here.systemd_unit or ""}
    assert process.value == 3000 * MIB
    # The same facts under dcgm-exporter's names, labelled with the PCI bus id and driver.
    assert by_gpu(samples, "DCGM_FI_DEV_XID_ERRORS") == {0: 0, 1: 79}
    assert by_gpu(samples, "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL") == {0: 2}
    assert by_gpu(samples, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER") == {0: 17}
    assert by_gpu(samples, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") == {
        0: 123_456_789, 1: 123_456_789}
    assert "DCGM_FI_DEV_MEMORY_TEMP" in samples  # the H100 has it; the RTX card does not
    assert set(by_gpu(samples, "DCGM_FI_DEV_MEMORY_TEMP")) == {0}
    for s in samples["DCGM_FI_DEV_GPU_TEMP"]:
        assert s.labels["pci_bus_id"] == "00000000:1B:00.0"
        assert s.labels["DCGM_FI_DRIVER_VERSION"] == "580.95.05"
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
