"""Alembic revisions (Alembic reads these files itself; they are not imported as modules)."""
