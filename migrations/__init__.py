"""The Alembic migrations (installed as ``gpuhistory.migrations``; see gpuhistory.assets)."""
