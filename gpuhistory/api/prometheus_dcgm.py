"""The dcgm-exporter names, units and labels for the fields we read (``metrics_dcgm``).

So that dashboards and alerts written for NVIDIA's dcgm-exporter (its published Grafana
dashboard among them) work unchanged against ``/metrics``. The names, types and units are
dcgm-exporter's own: MHz, MiB, °C, W, percent, millijoules, nanoseconds (current DCGM's
unit for the violation counters; DCGM before 4 documented µs); its counters carry
no ``_total`` suffix, so their names are served as they are (see ``retype``). Every
series has dcgm-exporter's labels ``gpu``, ``UUID``, ``device`` (``nvidia<index>``),
``modelName`` and ``Hostname``, and ``pci_bus_id`` and ``DCGM_FI_DRIVER_VERSION`` where the
in-process NVML backend knows them. See docs/prometheus.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from gpuhistory.domain.reading import Reading
from gpuhistory.sampling.hardware import HardwareFacts
from gpuhistory.storage.queries import LatestSample


@dataclass(frozen=True, slots=True)
class DcgmGpu:
    """One GPU whose newest sample is current, with what else the log and sampler know."""

    entry: LatestSample
    reading: Reading
    facts: HardwareFacts | None  # the in-process sampler's newest hardware facts
    throttle_ns: Mapping[str, int | None]  # the newest throttle_counters row (may be empty)
    last_xid: int  # the code of the newest XID event, 0 when none


def _labels(g: DcgmGpu) -> dict[str, str]:
    gpu = g.entry.gpu
    labels = {"gpu": str(gpu.index), "UUID": gpu.uuid, "device": f"nvidia{gpu.index}",
              "modelName": gpu.name or "", "Hostname": gpu.host}
    if g.facts is not None and g.facts.pci_bus_id:
        labels["pci_bus_id"] = g.facts.pci_bus_id
    if g.facts is not None and g.facts.driver_version:
        labels["DCGM_FI_DRIVER_VERSION"] = g.facts.driver_version
    return labels


def _thermal_ns(g: DcgmGpu) -> int | None:
    parts = [g.throttle_ns.get("sw_thermal_ns"), g.throttle_ns.get("hw_thermal_ns")]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


def _reliability(name: str) -> Callable[[DcgmGpu], Any]:
    def value(g: DcgmGpu) -> Any:
        if g.facts is None or g.facts.reliability is None:
            return None
        return g.facts.reliability.get(name)
    return value


# (name, type, help as dcgm-exporter words it, value of a GPU); None: no sample for it.
FAMILIES: tuple[tuple[str, str, str, Callable[[DcgmGpu], Any]], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).",
     lambda g: g.reading.sm_clock_mhz),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).",
     lambda g: g.reading.mem_clock_mhz),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).",
     lambda g: g.reading.memory_temperature_c),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).",
     lambda g: g.reading.temperature_c),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda g: g.reading.power_w),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
     "Total energy consumption since boot (in mJ).", _reliability("energy_mj")),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.",
     _reliability("pcie_replays")),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).",
     lambda g: g.reading.utilization_pct),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.",
     lambda g: g.last_xid),
    ("DCGM_FI_DEV_POWER_VIOLATION", "counter",
     "Throttling duration due to power constraints (in ns).",
     lambda g: g.throttle_ns.get("power_cap_ns")),
    ("DCGM_FI_DEV_THERMAL_VIOLATION", "counter",
     "Throttling duration due to thermal constraints (in ns).", _thermal_ns),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "Current clock throttle reasons.",
     lambda g: g.reading.clock_event_reasons),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
     lambda g: g.reading.memory_free_mib),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
     lambda g: g.reading.memory_used_mib),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).",
     lambda g: g.reading.memory_reserved_mib),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
     "Total number of single-bit volatile ECC errors.", _reliability("ecc_volatile_corrected")),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
     "Total number of double-bit volatile ECC errors.",
     _reliability("ecc_volatile_uncorrected")),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter",
     "Total number of single-bit persistent ECC errors.",
     _reliability("ecc_aggregate_corrected")),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
     "Total number of double-bit persistent ECC errors.",
     _reliability("ecc_aggregate_uncorrected")),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
     "Number of remapped rows for uncorrectable errors",
     _reliability("remapped_rows_uncorrectable")),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
     "Number of remapped rows for correctable errors",
     _reliability("remapped_rows_correctable")),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed",
     _reliability("remap_failure")),
)


COUNTERS = frozenset(name for name, kind, _, _ in FAMILIES if kind == "counter")


def dcgm_families(gpus: list[DcgmGpu]) -> Iterator[Metric]:
    """One family per DCGM field, a sample per GPU that has the value.

    Every family is built as a gauge: prometheus_client would add ``_total`` to a counter's
    name, which DCGM queries do not use. ``retype`` then declares the counters as such.
    """
    labels = [_labels(g) for g in gpus]
    for name, _, doc, value_of in FAMILIES:
        family = Metric(name, doc, "gauge")
        for g, labelled in zip(gpus, labels, strict=True):
            value = value_of(g)
            if value is None:
                continue
            family.add_sample(name, labelled, float(value))
        yield family


def retype(text: bytes) -> bytes:
    """``text`` with the DCGM counters' ``# TYPE`` lines saying counter, as dcgm-exporter's."""
    for name in COUNTERS:
        text = text.replace(f"# TYPE {name} gauge\n".encode(), f"# TYPE {name} counter\n".encode())
    return text
