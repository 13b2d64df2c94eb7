"""The read-only commands' guard: a SQLite database that does not exist is an error.

Opening a SQLite path creates the file, so ``status --db typo.db`` would otherwise answer
from a fresh, empty log ("no GPUs recorded") and leave that file behind. ``status``,
``history`` and ``incidents`` refuse instead; the commands that write (``serve``,
``sampler``, ``import``, ``db upgrade``) still create the database.
"""

from __future__ import annotations

from pathlib import Path

import click


def sqlite_file(db: str | None) -> Path | None:
    """The file a ``--db`` value names: a path, ``sqlite:///...``, or the default one; None
    for another database (PostgreSQL reports a missing database itself) or an in-memory one."""
    from sqlalchemy.engine import make_url

    from gpuhistory.storage.engine import default_db_path

    if db is None:
        return default_db_path()
    if "://" not in db:
        return Path(db).expanduser()
    url = make_url(db)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("mode") == "memory" or url.database.startswith("file::memory:"):
        return None
    return Path(url.database).expanduser()


def require_existing(db: str | None) -> None:
    """Stop with exit status 1 when ``db`` is a SQLite file that does not exist."""
    path = sqlite_file(db)
    if path is not None and not path.exists():
        raise click.ClickException(
            f"no database at {path}: nothing has been recorded there (it is not created by "
            "a command that only reads). Point --db (GPUHISTORY_DB) at the database the "
            "service writes, or create one with `gpuhistory serve` or `gpuhistory import`.")
