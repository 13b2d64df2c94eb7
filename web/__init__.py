"""The dashboard's files (installed as ``gpuhistory.web``; found through gpuhistory.assets)."""
