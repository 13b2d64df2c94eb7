"""Noticing that a running service's SQLite files were deleted or replaced, and refusing to
acknowledge writes into them.

A process writing to SQLite keeps writing through the descriptors it opened: if someone
deletes the database or its ``-wal`` file, or renames another file over the database, the
process goes on committing into a file nobody will read again, and everything acknowledged
since is gone at the next start. So the guard:

- keeps a connection of its own open for the service's lifetime (the *anchor*). The WAL
  file exists while any connection is open in WAL mode, so with the anchor open it never
  goes away by itself; and since the anchor holds both files open, their inode numbers
  cannot be reused by a new file while the service runs;
- records the device and inode of the database and of its ``-wal`` file at start, and
  compares them with what the paths hold now (``os.stat``) at every commit that changed
  rows, and whenever it is asked (``/healthz``). A path that is gone was deleted; a path
  holding another inode was replaced;
- once a file is lost, refuses every commit that changed rows: the transaction is rolled
  back and an ``OperationalError`` (reason ``file_lost``) goes to the caller — a 503
  ``database_unavailable`` for the API, a tick kept in the write buffer for the sampler;
  when the database file itself is lost, new connections are refused too (one would open,
  or create, another file at the path). Reads go on through the connections already open;
- saves what was committed before the loss was noticed: the anchor checkpoints the WAL
  (``wal_checkpoint(TRUNCATE)``), copying every committed frame into the database file the
  service opened, so a deleted WAL loses nothing that was acknowledged.

The loss is final for the process: restart the service once the files are in order.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gpuhistory.storage.engine import BUSY_TIMEOUT_MS

log = logging.getLogger(__name__)

FILE_LOST = "deleted or replaced under the running service"  # engine.unavailable_reason
_CHANGES = "gpuhistory.file_guard.changes"  # total_changes at BEGIN, per connection


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class FileGuard:
    """Watches one SQLite database file and its WAL for the lifetime of an engine."""

    def __init__(self, engine: sa.Engine, path: Path) -> None:
        self.path = path
        self.wal = Path(f"{path}-wal")
        self._lock = threading.Lock()
        self._anchor = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
        self._anchor.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opens the WAL
        self._expected = {"database file": (path, _identity(path)),
                          "WAL file": (self.wal, _identity(self.wal))}
        self.problem: str | None = None
        self.database_lost = False
        self._salvage: threading.Thread | None = None
        self._engine = engine
        sa.event.listen(engine, "begin", self._on_begin)
        sa.event.listen(engine, "commit", self._on_commit)
        sa.event.listen(engine, "do_connect", self._on_connect)

    @classmethod
    def attach(cls, engine: sa.Engine) -> FileGuard | None:
        """A guard for ``engine``'s SQLite file; None for PostgreSQL or an in-memory one."""
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:" \
                or database.startswith("file:"):
            return None
        return cls(engine, Path(database))

    def check(self) -> str | None:
        """Why the files can no longer be trusted (None while they can). Final once set."""
        if self.problem is not None:
            return self.problem
        for what, (path, expected) in self._expected.items():
            if expected is None:
                continue  # (a WAL that was not there at start: not in WAL mode)
            now = _identity(path)
            if now == expected:
                continue
            how = "deleted" if now is None else "replaced by another file"
            self._lost(f"the {what} {path} was {how} under the running service; "
                       "writes are refused until it is restarted", what == "database file")
            break
        return self.problem

    def close(self) -> None:
        """Detach from the engine and close the anchor (after the engine's connections)."""
        for name, fn in (("begin", self._on_begin), ("commit", self._on_commit),
                         ("do_connect", self._on_connect)):
            if sa.event.contains(self._engine, name, fn):
                sa.event.remove(self._engine, name, fn)
        if self._salvage is not None:
            self._salvage.join()
        with self._lock:
            self._anchor.close()

    # -- internals -----------------------------------------------------------------------
    def _lost(self, problem: str, database: bool) -> None:
        with self._lock:
            if self.problem is not None:
                return
            self.database_lost = database
            self.problem = problem  # from here on every commit that writes is refused
            log.error("%s", problem)
            # Not in this thread: it may be a writer inside its transaction, holding the
            # write lock the checkpoint needs until its refused commit rolls back.
            self._salvage = threading.Thread(target=self._checkpoint, daemon=True,
                                             name="gpuhistory-wal-salvage")
            self._salvage.start()

    def _checkpoint(self) -> None:
        """Copy every committed frame of the WAL into the database file that was opened."""
        try:
            with self._lock:
                busy, frames, copied = self._anchor.execute(
                    "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.error("could not checkpoint the WAL into %s: %s", self.path, exc)
            return
        if busy:
            log.error("could not checkpoint the WAL into %s: busy (%d of %d frames copied)",
                      self.path, copied, frames)
            return
        log.warning("the WAL's committed frames are copied into the database file the "
                    "service opened (%s)", self.path)
        self.problem = f"{self.problem} (all it committed before is in the database file " \
                       "it opened: checkpointed)"

    def _refusal(self, statement: str) -> sa.exc.OperationalError:
        return sa.exc.OperationalError(statement, None, sqlite3.OperationalError(
            f"database file {FILE_LOST}: {self.problem}"))

    def _on_begin(self, conn: sa.Connection) -> None:
        conn.info[_CHANGES] = conn.connection.dbapi_connection.total_changes  # type: ignore[union-attr]

    def _on_commit(self, conn: sa.Connection) -> None:
        dbapi = conn.connection.dbapi_connection
        changes = dbapi.total_changes  # type: ignore[union-attr]
        if changes != conn.info.get(_CHANGES, changes) and self.check() is not None:
            dbapi.rollback()  # type: ignore[union-attr]  # now: the connection stays usable
            raise self._refusal("COMMIT")

    def _on_connect(self, _dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        if self.check() is not None and self.database_lost:
            raise sqlite3.OperationalError(f"database file {FILE_LOST}: {self.problem}")
