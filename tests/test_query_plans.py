"""Every range query uses an index for its range: checked with EXPLAIN QUERY PLAN.

A query that scans a whole table works on a test log and times out on a month of data;
these tests fail when a change turns a seek into a scan.
"""

from __future__ import annotations

import sqlalchemy as sa

from gpuhistory.storage import queries
from gpuhistory.storage.schema import samples


def plan(engine: sa.Engine, statement, params: dict | None = None) -> str:
    """SQLite's plan for a statement, exactly as SQLAlchemy sends it (SQL and parameters)."""
    sent: list[tuple[str, tuple]] = []

    def capture(_conn, _cursor, sql, parameters, _context, _many) -> None:
        sent.append((sql, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            conn.execute(statement, params or {}).all()
            sql, parameters = sent[-1]
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters).all()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    return "\n".join(r[-1] for r in rows)


def test_latest_samples_is_one_seek_per_gpu(engine) -> None:
    """Status of all GPUs: the newest sample and cooldown starts are key seeks, no scan."""
    for timed in (False, True):
        statement = queries._latest_statement(False, timed)
        text = plan(engine, statement, {"host": "h", "at": 0})
        assert "SEARCH newest USING PRIMARY KEY (gpu_id=?" in text, text
        assert "SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms=?)" in text, text
        assert "SEARCH transitions USING COVERING INDEX ix_transitions_change (gpu_id=? AND " \
            "from_state=? AND to_state=?" in text, text
        assert "SCAN samples" not in text and "SCAN transitions" not in text, text


def test_trend_and_history_range_scans_use_the_samples_key(engine) -> None:
    """The trend aggregate and a history page read only the window, by the primary key."""
    s = samples.c
    window = sa.and_(s.gpu_id == 1, s.ts_ms >= 0, s.ts_ms <= 10)
    for statement in (
        sa.select(sa.func.count(s.temperature_c)).where(window),
        sa.select(samples).where(window).order_by(s.ts_ms.desc()).limit(200),
    ):
        text = plan(engine, statement)
        assert "SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?)" in text, text


def test_cooldown_starts_are_seeks_whatever_the_history(engine) -> None:
    """Throttle advice at a past time: one max() seek per (from, to) pair, never a walk
    through the GPU's transitions (which grew with the log before ix_transitions_change)."""
    text = plan(engine, queries._COOLDOWN_STARTS, {"gpu": 1, "at": 5})
    assert text.count("SEARCH transitions USING COVERING INDEX ix_transitions_change "
                      "(gpu_id=? AND from_state=? AND to_state=? AND ts_ms<?)") == 7, text
    assert "SCAN transitions" not in text, text


def test_event_cursor_is_a_rowid_range(engine) -> None:
    """Paging the event log by id is a range on the integer primary key."""
    from gpuhistory.storage.schema import events

    statement = sa.select(events).where(events.c.id > 5).order_by(events.c.id).limit(100)
    text = plan(engine, statement)
    assert "SEARCH events USING INTEGER PRIMARY KEY (rowid>?)" in text, text


def test_process_searches_seek_by_job_user_and_running_gpu(engine) -> None:
    """Which GPUs did job 4711 use / what did alice run: an index seek on the job or the
    user, never a walk through every process ever recorded; the processes running on a GPU
    (status) are a seek on (gpu, ended)."""
    from gpuhistory.storage import processes

    for where, index in ((processes.ProcessFilter(job="4711"), "ix_gpu_processes_slurm_job"),
                         (processes.ProcessFilter(user="alice", since_ms=0, until_ms=9),
                          "ix_gpu_processes_user")):
        text = plan(engine, processes.search_statement(where, 10))
        assert f"SEARCH gpu_processes USING INDEX {index}" in text, text
        assert "SCAN gpu_processes" not in text, text
    text = plan(engine, processes.running_statement([1, 2], None))
    assert "USING INDEX ix_gpu_processes_gpu_ended (gpu_id=? AND ended_ms=?)" in text, text
