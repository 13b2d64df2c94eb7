"""Runtime configuration changes, stored as ``config_changed`` events.

The effective configuration is the static layers with every runtime change folded over
them in event order; a change to ``null`` removes the runtime value of that key. Every
process on the database sees a change within ``refresh_ms`` (one index seek to check).

A change is a compare-and-set: one writer at a time on the database (SQLite ``BEGIN
IMMEDIATE``; a PostgreSQL advisory lock), which reads the changes stored so far, validates
the configuration the change will produce and writes it in that same transaction. Two
changes each valid alone but invalid together can therefore never both be stored: the
second is validated against the first. The configuration's *version* is the id of its last
``config_changed`` event (0 for none); a change may require the version it was based on
(``If-Match``) and is refused with ``VersionMismatch`` when another change came first.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from gpuhistory.clock import Clock
from gpuhistory.config.layers import StaticLayers
from gpuhistory.domain.config import Config
from gpuhistory.domain.events import EventKind
from gpuhistory.storage.engine import inserted_id
from gpuhistory.storage.schema import events

log = logging.getLogger(__name__)
KIND = str(EventKind.CONFIG_CHANGED)


class UnknownConfigKeys(ValueError):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(f"unknown configuration key(s): {', '.join(keys)}")


class VersionMismatch(Exception):
    """The configuration changed since the version a change was based on."""

    def __init__(self, expected: str, current: int) -> None:
        self.expected, self.current = expected, current
        super().__init__(f"the configuration is at version {current}, not {expected}")


CONFIG_LOCK_KEY = 0x67706366  # "gpcf": PostgreSQL advisory lock of configuration writers


@dataclass(frozen=True)
class Snapshot:
    """One consistent reading: the configuration, its sources, version and change time."""

    config: Config
    sources: dict[str, str]
    version: int
    updated_ms: int | None


@dataclass(frozen=True)
class Change:
    """What a stored change produced: the configuration, the diff, and its version."""

    config: Config
    diff: dict[str, Any]
    version: int


class ConfigStore:
    def __init__(self, engine: sa.Engine, static: StaticLayers, clock: Clock,
                 refresh_ms: int = 1000) -> None:
        self.engine = engine
        self.static = static
        self.clock = clock
        self.refresh_ms = refresh_ms
        self._lock = threading.Lock()
        self._runtime: dict[str, Any] = {}
        self._last_id = 0
        self._checked_ms = -(10**18)
        self._updated_ms: int | None = None
        self._config = static.config()
        self.refresh(force=True)

    # -- reading -----------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Fold in config_changed events newer than the last seen (at most every refresh_ms)."""
        now = self.clock.now_ms()
        if not force and now - self._checked_ms < self.refresh_ms:
            return
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events.c.id, events.c.ts_ms, events.c.payload)
                .where(events.c.kind == KIND, events.c.id > self._last_id)
                .order_by(events.c.id)
            ).all()
        with self._lock:
            self._checked_ms = now
            for row in rows:
                for key, change in (row.payload.get("changes") or {}).items():
                    if key not in Config.model_fields:
                        continue
                    if change.get("new") is None and change.get("cleared"):
                        self._runtime.pop(key, None)
                    else:
                        self._runtime[key] = change.get("new")
                self._last_id, self._updated_ms = row.id, row.ts_ms
            if rows:
                self._config = self._fold(self._runtime)

    def _fold(self, runtime: dict[str, Any]) -> Config:
        merged = {**self.static.values, **runtime}
        try:
            return Config.model_validate(merged)
        except ValidationError:
            # Static layers changed under stored runtime values: keep what still validates.
            good = dict(self.static.values)
            for key, value in runtime.items():
                try:
                    Config.model_validate({**good, key: value})
                    good[key] = value
                except ValidationError:
                    continue
            return Config.model_validate(good)

    def at(self, ts_ms: int) -> Config:
        """The configuration that was in force at ``ts_ms``: runtime changes up to then.

        Answers about the past (status or throttle advice ``at`` a time) use the thresholds
        of that time, not today's.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events.c.payload).where(events.c.kind == KIND,
                                                  events.c.ts_ms <= ts_ms)
                .order_by(events.c.id)
            ).scalars().all()
        runtime: dict[str, Any] = {}
        for payload in rows:
            for key, change in (payload.get("changes") or {}).items():
                if key not in Config.model_fields:
                    continue
                if change.get("cleared"):
                    runtime.pop(key, None)
                else:
                    runtime[key] = change.get("new")
        return self._fold(runtime)

    def current(self) -> Config:
        """The configuration in force: the last one read when the database cannot be read
        now (an outage, or no pooled connection free within the pool's timeout), so a tick
        goes on (to the write buffer) through it."""
        try:
            self.refresh()
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            with self._lock:
                self._checked_ms = self.clock.now_ms()  # try again after refresh_ms
            orig = getattr(exc, "orig", None)
            log.warning("configuration not refreshed (database: %s); using the last read",
                        type(orig).__name__ if orig is not None else type(exc).__name__)
        return self._config

    __call__ = current

    def sources(self) -> dict[str, str]:
        self.refresh()
        with self._lock:
            return {k: "api" if k in self._runtime else self.static.sources.get(k, "default")
                    for k in Config.model_fields}

    @property
    def updated_ms(self) -> int | None:
        return self._updated_ms

    @property
    def version(self) -> int:
        """The id of the last ``config_changed`` event read (0: no runtime change)."""
        return self._last_id

    def snapshot(self) -> Snapshot:
        """The configuration in force with its sources and version, read together."""
        self.current()
        with self._lock:
            sources = {k: "api" if k in self._runtime else self.static.sources.get(k, "default")
                       for k in Config.model_fields}
            return Snapshot(self._config, sources, self._last_id, self._updated_ms)

    # -- changing ----------------------------------------------------------------------
    def update(self, changes: dict[str, Any], actor: str = "api") -> tuple[Config, dict]:
        """``change`` without a version check: the configuration produced, and the diff."""
        done = self.change(changes, actor)
        return done.config, done.diff

    def change(self, changes: dict[str, Any], actor: str = "api",
               if_version: set[str] | None = None) -> Change:
        """Validate ``changes`` against the configuration they produce and store them as one
        event, atomically; nothing changes if any key is bad.

        ``if_version``: versions (as strings) the change may apply to; ``"*"`` matches any.
        Raises UnknownConfigKeys, VersionMismatch, or pydantic's ValidationError (naming
        each bad key).
        """
        unknown = sorted(set(changes) - set(Config.model_fields))
        if unknown:
            raise UnknownConfigKeys(unknown)
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                                 {"k": CONFIG_LOCK_KEY})
                # Under the lock: the changes stored so far, as they are now.
                rows = conn.execute(
                    sa.select(events.c.id, events.c.payload)
                    .where(events.c.kind == KIND).order_by(events.c.id)
                ).all()
                version = rows[-1].id if rows else 0
                if if_version is not None and "*" not in if_version \
                        and str(version) not in if_version:
                    raise VersionMismatch(", ".join(sorted(if_version)), version)
                runtime = replay(row.payload for row in rows)
                old_config = self._fold(runtime)
                for key, value in changes.items():
                    if value is None:
                        runtime.pop(key, None)
                    else:
                        runtime[key] = value
                new_config = Config.model_validate({**self.static.values, **runtime})
                diff = {
                    key: {"old": getattr(old_config, key), "new": getattr(new_config, key),
                          **({"cleared": True} if changes[key] is None else {})}
                    for key in changes
                    if changes[key] is None
                    or getattr(old_config, key) != getattr(new_config, key)
                }
                if diff:
                    # A cleared key stores new=None so that replay removes the runtime value.
                    stored = {k: ({"old": v["old"], "new": None, "cleared": True}
                                  if v.get("cleared") else v) for k, v in diff.items()}
                    version = inserted_id(conn.execute(events.insert().values(
                        ts_ms=self.clock.now_ms(), gpu_id=None, kind=KIND,
                        payload={"changes": stored, "actor": actor})))
        self.refresh(force=True)
        return Change(new_config, diff, version)


def replay(payloads: Any) -> dict[str, Any]:
    """The runtime values that a sequence of ``config_changed`` payloads leaves."""
    runtime: dict[str, Any] = {}
    for payload in payloads:
        for key, change in (payload.get("changes") or {}).items():
            if key not in Config.model_fields:
                continue
            if change.get("new") is None and change.get("cleared"):
                runtime.pop(key, None)
            else:
                runtime[key] = change.get("new")
    return runtime
