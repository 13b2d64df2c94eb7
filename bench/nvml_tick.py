"""Real NVML on a GPU machine: our whole tick versus the raw reads and nvidia-smi.

DESIGN §6: the whole tick (read + classify + persist) for one real GPU <= 0.5 ms; raw
pynvml reads of the core fields are the floor; an ``nvidia-smi`` subprocess is what
GPUtil-style tools pay per query.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pynvml

from bench.common import Figure, SkipBenchmark, latency_figure, time_calls
from gpuhistory.clock import SystemClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.sampling.nvml import NvmlBackend, nvml_library_present
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore

SMI_QUERY = ("timestamp,index,temperature.gpu,temperature.memory,memory.used,memory.total,"
             "utilization.gpu,power.draw,clocks.sm,clocks.mem,clocks_event_reasons.active,"
             "pstate,fan.speed")


def raw_read(handle: object) -> None:
    """The same fields our backend reads, straight through pynvml: the floor."""
    n = pynvml
    n.nvmlDeviceGetTemperature(handle, n.NVML_TEMPERATURE_GPU)
    n.nvmlDeviceGetFieldValues(handle, [n.NVML_FI_DEV_MEMORY_TEMP])
    n.nvmlDeviceGetMemoryInfo(handle)
    n.nvmlDeviceGetUtilizationRates(handle)
    n.nvmlDeviceGetPowerUsage(handle)
    n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_SM)
    n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_MEM)
    n.nvmlDeviceGetCurrentClocksEventReasons(handle)
    n.nvmlDeviceGetPerformanceState(handle)


def run(quick: bool) -> list[Figure]:
    if not nvml_library_present():
        raise SkipBenchmark("no NVML library (no NVIDIA driver) on this machine")
    n = 200 if quick else 2000
    figures = []
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        figures.append(latency_figure("nvml", "raw pynvml reads, GPU 0 (floor)",
                                      time_calls(lambda: raw_read(handle), n), None,
                                      "9 NVML calls: the fields of one Reading"))
    finally:
        pynvml.nvmlShutdown()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(Path(tmp) / "nvml.db")
        upgrade(engine)
        clock = SystemClock()
        backend = NvmlBackend(clock=clock)
        gpus = len(backend.read())
        store = LogStore(engine, "bench")
        sampler = Sampler(backend, Pipeline(store, "nvml", lambda: DEFAULT_CONFIG), store, clock)
        backend_reads = time_calls(backend.read, n)
        ticks = time_calls(sampler.tick, n)
        backend.close()
        engine.dispose()
    figures.append(latency_figure("nvml", f"NvmlBackend.read(), {gpus} GPU(s)", backend_reads,
                                  None, "the backend alone, no persistence"))
    figures.append(latency_figure("nvml", f"whole tick, {gpus} real GPU(s), persisted", ticks,
                                  0.5 * gpus, "read + classify + one SQLite transaction"))
    try:
        import GPUtil
    except ImportError:
        GPUtil = None
    if GPUtil is not None and shutil.which("nvidia-smi"):
        calls = time_calls(GPUtil.getGPUs, 20 if quick else 100, warmup=2)
        figures.append(latency_figure("nvml", "GPUtil.getGPUs() (peer)", calls, None,
                                      "GPUtil 1.4: one nvidia-smi subprocess per call"))
    smi = shutil.which("nvidia-smi")
    if smi:
        cmd = [smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"]
        calls = time_calls(lambda: subprocess.run(cmd, capture_output=True, check=True),
                           20 if quick else 100, warmup=2)
        figures.append(latency_figure("nvml", "nvidia-smi --query-gpu subprocess", calls, None,
                                      "what GPUtil-style tools pay per query"))
    return figures
