"""Effective configuration: defaults ← TOML file ← environment ← runtime changes (events)."""
