"""gpuhistory's benchmark harness: ``python -m bench [--quick] [--only NAME ...]``."""
