"""Where readings come from (NVML, a replayed trace) and the job that samples them."""
