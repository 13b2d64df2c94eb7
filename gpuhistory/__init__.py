"""gpuhistory: a GPU monitoring service that remembers.

Every NVML sample and state change goes into a SQL log; status, history, trend, throttle
advice and overheat post-mortems are queries over it.

    from gpuhistory import GPUManager, get_gpu_manager   # in-process, the seed's API
    from gpuhistory import Client                          # the REST API of a server
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "GPUManager", "__version__", "get_gpu_manager"]

if TYPE_CHECKING:
    from gpuhistory.client import Client
    from gpuhistory.manager import GPUManager, get_gpu_manager


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import gpuhistory` stays cheap and side-effect free.
    if name in ("GPUManager", "get_gpu_manager"):
        from gpuhistory import manager

        return getattr(manager, name)
    if name == "Client":
        from gpuhistory.client import Client

        return Client
    raise AttributeError(f"module 'gpuhistory' has no attribute {name!r}")
