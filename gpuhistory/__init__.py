"""gpuhistory: a GPU monitoring service that remembers.

Every NVML sample and state change goes into a SQL log; status, history, trend, throttle
advice and overheat post-mortems are queries over it.
"""

__version__ = "0.1.0"
