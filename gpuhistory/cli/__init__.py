"""The gpuhistory command line."""
