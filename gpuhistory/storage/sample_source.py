"""Where raw samples are read from: ``samples``, and on PostgreSQL also ``samples_kept``.

Retention on PostgreSQL drops whole daily partitions; the samples of incident windows in a
partition are copied into ``samples_kept`` first (gpuhistory/analytics/retention.py). The
raw history and the post-mortem queries read :func:`raw_samples`, so they answer for a kept
window after the drop exactly as before it. A kept row that is also in ``samples`` (the
day imported again after its partition went) is read once, from ``samples``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gpuhistory.storage.schema import samples, samples_kept

_COLUMNS = ", ".join(c.name for c in samples.columns)
# The same as text, for statements written in SQL (PostgreSQL only): a parenthesised
# subquery to put where ``samples`` would be, with an alias after it.
RAW_SAMPLES_SQL = (
    f"(SELECT {_COLUMNS} FROM samples UNION ALL SELECT {_COLUMNS} FROM samples_kept k "
    "WHERE NOT EXISTS (SELECT 1 FROM samples o WHERE o.gpu_id = k.gpu_id "
    "AND o.ts_ms = k.ts_ms))")


def raw_samples(conn: sa.Connection) -> Any:
    """A selectable with the columns of ``samples``: the table itself on SQLite; on
    PostgreSQL ``samples UNION ALL`` the kept rows not in it. Filters on ``gpu_id`` and
    ``ts_ms`` reach both branches' primary keys (PostgreSQL pushes them into the union)."""
    if conn.dialect.name != "postgresql":
        return samples
    k = samples_kept.c
    kept = sa.select(*samples_kept.c).where(~sa.exists().where(
        samples.c.gpu_id == k.gpu_id, samples.c.ts_ms == k.ts_ms))
    return sa.union_all(sa.select(*samples.c), kept).subquery("samples")
