"""The ``maintenance_runs`` rows: claim a fleet-wide job's period, record how its run went.

A claim is one statement, an upsert whose update only applies when the job is due::

    INSERT INTO maintenance_runs (...) VALUES (:job, :me, 1, ...)
    ON CONFLICT (name) DO UPDATE SET holder = :me, runs = runs + 1, next_due_ms = :period_end,
        busy_until_ms = :now + :busy, started_ms = :now, finished_ms = NULL
    WHERE next_due_ms <= :now AND (busy_until_ms IS NULL OR busy_until_ms <= :now)
    -- (or either time lies implausibly far ahead: written by a clock that was ahead)

It writes one row (this process runs the job now) or none (another process holds this
period, or is still running the last one). PostgreSQL makes a second, concurrent upsert of
the same row wait for the first to commit and re-check the WHERE against the row it wrote,
so exactly one claimer wins; SQLite has one writer at a time. Each call is one short
transaction and keeps no session state, so it works through a transaction-pooling
PgBouncer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gpuhistory.storage.schema import maintenance_runs

_M = maintenance_runs.c
ERROR_CHARS = 2000  # of last_error kept


@dataclass(frozen=True, slots=True)
class RunRow:
    name: str
    holder: str
    runs: int
    period_ms: int
    next_due_ms: int
    busy_until_ms: int | None
    started_ms: int
    finished_ms: int | None
    last_error: str | None


def claim(engine: sa.Engine, name: str, holder: str, now_ms: int, period_end_ms: int,
          busy_ms: int, period_ms: int) -> bool:
    """Claim job ``name`` for the period ending at ``period_end_ms``; True: run it now.

    Due when the last claimed period has ended (``next_due_ms <= now``) and no run is in
    progress (``busy_until_ms`` unset, or passed: its holder is presumed dead). Times more
    than a period (a busy time) beyond what this claim would write were written by a clock
    that was ahead (stepped back since, or skewed): they do not block the job.
    """
    values = {"name": name, "holder": holder, "runs": 1, "period_ms": period_ms,
              "next_due_ms": period_end_ms, "busy_until_ms": now_ms + busy_ms,
              "started_ms": now_ms, "finished_ms": None}
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        insert = (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(
            maintenance_runs).values(**values)
        statement = insert.on_conflict_do_update(
            index_elements=[_M.name],
            set_={**{k: v for k, v in values.items() if k not in ("name", "runs")},
                  "runs": _M.runs + 1},
            where=sa.and_(
                sa.or_(_M.next_due_ms <= now_ms,
                       _M.next_due_ms > period_end_ms + period_ms),  # set by a clock ahead
                sa.or_(_M.busy_until_ms.is_(None), _M.busy_until_ms <= now_ms,
                       _M.busy_until_ms > now_ms + 2 * busy_ms)),
        ).execution_options(preserve_rowcount=True)
        with conn.begin():
            return conn.execute(statement).rowcount == 1


def finish(engine: sa.Engine, name: str, holder: str, started_ms: int, now_ms: int,
           error: str | None) -> bool:
    """Record the end of the run ``holder`` started at ``started_ms``; False when that run
    is no longer the row's (it overran its busy time and another process took the job)."""
    with engine.begin() as conn:
        return bool(conn.execute(
            maintenance_runs.update()
            .where(_M.name == name, _M.holder == holder, _M.started_ms == started_ms)
            .values(finished_ms=now_ms, busy_until_ms=None,
                    last_error=None if error is None else error[:ERROR_CHARS])
        ).rowcount)


def _row(row: sa.Row[Any]) -> RunRow:
    return RunRow(row.name, row.holder, row.runs, row.period_ms, row.next_due_ms,
                  row.busy_until_ms, row.started_ms, row.finished_ms, row.last_error)


def rows(engine: sa.Engine) -> dict[str, RunRow]:
    """Every job's row, by name."""
    with engine.connect() as conn:
        return {r.name: _row(r) for r in conn.execute(
            sa.select(maintenance_runs).order_by(_M.name))}


__all__ = ["RunRow", "claim", "finish", "rows"]
