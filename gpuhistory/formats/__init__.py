"""Readers of recorded GPU data: gpuhistory's trace CSV and nvidia-smi's CSV logs."""
