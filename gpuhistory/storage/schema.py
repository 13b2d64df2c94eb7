"""Table definitions (SQLAlchemy Core) used by queries and the write path.

The schema itself is created and changed only by the Alembic migrations in
``migrations/``; a test checks that these definitions and the migrated database agree.

Size matters for ``samples`` (one row per GPU per tick): integer columns only, a
``WITHOUT ROWID`` table clustered on (gpu, ts) so a GPU's history is one range scan, power
as integer deciwatts, and facts that rarely change (name, total memory, power limit) kept
on ``gpus`` rather than repeated per row.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# An auto-incrementing 64-bit id that is also SQLite's rowid alias.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

gpus = sa.Table(
    "gpus",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("gpu_index", sa.SmallInteger, nullable=False),
    sa.Column("uuid", sa.String(96), nullable=False),
    sa.Column("name", sa.String(255)),
    sa.Column("memory_total_mib", sa.Integer),
    sa.Column("power_limit_w", sa.Float),
    sa.Column("slowdown_temp_c", sa.SmallInteger),
    sa.Column("shutdown_temp_c", sa.SmallInteger),
    sa.Column("backend", sa.String(16), nullable=False),
    sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("host", "uuid", name="uq_gpus_host_uuid"),
    sa.Index("ix_gpus_host_index", "host", "gpu_index"),
)

# Column order is PostgreSQL's alignment order (8-byte columns, then 4, then 2), so no
# padding falls between columns; SQLite's records have no alignment and ignore the order.
# The types are the narrowest that hold every value without loss: clock_event_reasons stays
# 64-bit (NVML's mask is 64-bit and unknown bits are kept and shown), memory_used_mib 32-bit
# (an H200 has 143,771 MiB), power_dw 32-bit (smallint would cost nothing on PostgreSQL's
# 8-byte row alignment but fail a reading above 3.3 kW). On PostgreSQL the table is
# range-partitioned by ts_ms (daily partitions: gpuhistory/storage/partitions.py); the
# primary key includes the partition key, as PostgreSQL requires.
samples = sa.Table(
    "samples",
    metadata,
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("clock_event_reasons", sa.BigInteger),
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
    sa.Column("memory_used_mib", sa.Integer),
    sa.Column("power_dw", sa.Integer),  # deciwatts
    # What the driver holds back (nvidia-smi's "Reserved"); memory_used_mib excludes it.
    # NULL where unknown: NVML's v1 memory info (which counts it as used), recordings.
    sa.Column("memory_reserved_mib", sa.Integer),
    sa.Column("state", sa.SmallInteger, nullable=False),
    sa.Column("temperature_c", sa.SmallInteger),
    sa.Column("memory_temperature_c", sa.SmallInteger),
    sa.Column("utilization_pct", sa.SmallInteger),
    sa.Column("sm_clock_mhz", sa.SmallInteger),
    sa.Column("mem_clock_mhz", sa.SmallInteger),
    sa.Column("pstate", sa.SmallInteger),
    sa.Column("fan_pct", sa.SmallInteger),
    sa.PrimaryKeyConstraint("gpu_id", "ts_ms", name="samples_pkey"),
    sqlite_with_rowid=False,
    postgresql_partition_by="RANGE (ts_ms)",
)

transitions = sa.Table(
    "transitions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("from_state", sa.SmallInteger),
    sa.Column("to_state", sa.SmallInteger, nullable=False),
    sa.Column("cause", sa.String(16), nullable=False),
    sa.Column("temperature_c", sa.SmallInteger),
    sa.Column("memory_percent", sa.Float),
    sa.Index("ix_transitions_gpu_ts", "gpu_id", "ts_ms"),
    sa.Index("ix_transitions_change", "gpu_id", "from_state", "to_state", "ts_ms"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id")),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Index("ix_events_kind_id", "kind", "id"),
    sa.Index("ix_events_gpu_id", "gpu_id", "id"),
    sa.Index("ix_events_ts", "ts_ms"),
)

# GPU-memory leases (DESIGN §3 "Leases"). A lease is active while ``released_ms`` is NULL
# and ``expires_ms`` is in the future; expiry is decided by comparing with now, the reaper
# only records it. Only a sha256 of the lease token is stored.
_UNRELEASED = sa.text("released_ms IS NULL")

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("allocation_id", sa.String(128), nullable=False),
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(128)),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("ttl_ms", sa.BigInteger, nullable=False),
    sa.Column("granted_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("released_ms", sa.BigInteger),
    sa.Column("release_reason", sa.String(16)),
    # What the lease covers (docs/leases.md "Covers"): pids (a JSON list), a Slurm job id
    # and a container id; NULL: not named.
    sa.Column("pids", sa.JSON),
    sa.Column("slurm_job", sa.String(64)),
    sa.Column("container", sa.String(128)),
    sa.CheckConstraint("memory_mib > 0", name="ck_leases_memory_positive"),
    sa.CheckConstraint("release_reason IN ('released', 'expired')",
                       name="ck_leases_release_reason"),
    # One unreleased lease per allocation id and host: a racing duplicate is an
    # integrity error even where the grant's lock does not cover it.
    sa.Index("uq_leases_host_allocation_active", "host", "allocation_id", unique=True,
             sqlite_where=_UNRELEASED, postgresql_where=_UNRELEASED),
    sa.Index("ix_leases_gpu_released", "gpu_id", "released_ms"),
    sa.Index("ix_leases_gpu_granted", "gpu_id", "granted_ms"),
)


# Rollups of samples (DESIGN §3 "Retention and rollups"; gpuhistory/analytics/rollups.py).
# One row per GPU per bucket (bucket_ms: the bucket's start), clustered on (gpu_id,
# bucket_ms) like samples. Partial aggregates that combine exactly: counts and sums, not
# averages (avg = sum / n of the non-NULL readings), min/max, the OR of the clock-event
# reasons (NULL when no sample reported any) and the worst state. Power in deciwatts.


def _rollup_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True),
        sa.Column("bucket_ms", sa.BigInteger, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("temp_n", sa.Integer, nullable=False),
        sa.Column("temp_min", sa.SmallInteger),
        sa.Column("temp_max", sa.SmallInteger),
        sa.Column("temp_sum", sa.BigInteger),
        sa.Column("mem_max", sa.Integer),
        sa.Column("util_n", sa.Integer, nullable=False),
        sa.Column("util_sum", sa.BigInteger),
        sa.Column("power_n", sa.Integer, nullable=False),
        sa.Column("power_sum", sa.BigInteger),
        sa.Column("power_max", sa.Integer),
        sa.Column("reasons", sa.BigInteger),
        sa.Column("state_max", sa.SmallInteger, nullable=False),
        sqlite_with_rowid=False,
    )


samples_1m = _rollup_table("samples_1m")
samples_1h = _rollup_table("samples_1h")

# The rollup watermark per GPU and resolution ('1m', '1h'): every bucket that starts
# before done_until_ms is complete and up to date.
rollup_progress = sa.Table(
    "rollup_progress",
    metadata,
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True),
    sa.Column("resolution", sa.String(8), primary_key=True),
    sa.Column("done_until_ms", sa.BigInteger, nullable=False),
)

# What ran on each GPU and what its hardware did (DESIGN §4; gpuhistory/sampling/hardware.py).
# One gpu_processes row per (GPU, pid) lifetime: running while ``ended_ms`` is NULL;
# ``used_memory_mib`` is the most the process held; ``last_seen_ms`` is refreshed at most
# once a minute while it runs. Who ran it and where, as far as /proc said (NULL: unknown;
# gpuhistory/sampling/procinfo.py): the real uid and its user name, the Slurm job and
# step, the container id, the Kubernetes pod UID, the systemd unit. throttle_counters holds
# NVML's cumulative throttle time in nanoseconds, a row only when a counter changed (a
# decrease means the driver restarted).
gpu_processes = sa.Table(
    "gpu_processes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("name", sa.String(255)),
    sa.Column("used_memory_mib", sa.Integer),
    sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
    sa.Column("ended_ms", sa.BigInteger),
    sa.Column("uid", sa.Integer),
    sa.Column("user_name", sa.String(64)),
    sa.Column("slurm_job_id", sa.String(32)),
    sa.Column("slurm_step", sa.String(32)),
    sa.Column("container_id", sa.String(64)),
    sa.Column("pod_uid", sa.String(64)),
    sa.Column("systemd_unit", sa.String(255)),
    sa.Index("ix_gpu_processes_gpu_ended", "gpu_id", "ended_ms"),
    sa.Index("ix_gpu_processes_gpu_first_seen", "gpu_id", "first_seen_ms"),
    sa.Index("ix_gpu_processes_slurm_job", "slurm_job_id"),
    sa.Index("ix_gpu_processes_user", "user_name"),
)

throttle_counters = sa.Table(
    "throttle_counters",
    metadata,
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True),
    sa.Column("ts_ms", sa.BigInteger, primary_key=True),
    sa.Column("power_cap_ns", sa.BigInteger),
    sa.Column("sw_thermal_ns", sa.BigInteger),
    sa.Column("hw_thermal_ns", sa.BigInteger),
    sa.Column("power_brake_ns", sa.BigInteger),
    sqlite_with_rowid=False,
)

# Overheat incidents (DESIGN §3), found by SQL over the samples: a row per incident, keyed
# (gpu, start) so re-detection and re-imports update the same row. ``end_ms`` is NULL while
# the incident is ongoing; the thresholds it was detected with are kept beside it.
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
    sa.Column("start_ms", sa.BigInteger, nullable=False),
    sa.Column("end_ms", sa.BigInteger),
    sa.Column("last_sample_ms", sa.BigInteger, nullable=False),
    sa.Column("peak_temp_c", sa.SmallInteger, nullable=False),
    sa.Column("peak_ms", sa.BigInteger, nullable=False),
    sa.Column("temp_sum", sa.BigInteger, nullable=False),
    sa.Column("temp_n", sa.Integer, nullable=False),
    sa.Column("above_critical_ms", sa.BigInteger, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("peak_power_dw", sa.Integer),
    sa.Column("clock_event_reasons", sa.BigInteger, nullable=False),
    sa.Column("temp_throttle", sa.Float, nullable=False),
    sa.Column("hysteresis_c", sa.Float, nullable=False),
    sa.Column("temp_critical", sa.Float, nullable=False),
    sa.Column("detected_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("gpu_id", "start_ms", name="uq_incidents_gpu_start"),
    sa.CheckConstraint("severity IN ('overheat', 'severe')", name="ck_incidents_severity"),
    sa.Index("ix_incidents_start", "start_ms"),
)

# How far each GPU's samples have been scanned for incidents. ``scanned_until_ms`` NULL:
# scan from the first sample. ``version`` changes with every write, so a detector that
# scanned while an import marked older samples dirty does not overwrite that mark;
# ``thresholds`` are those of the last scan (a change makes the next scan start further back).
incident_progress = sa.Table(
    "incident_progress",
    metadata,
    sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True,
              autoincrement=False),
    sa.Column("scanned_until_ms", sa.BigInteger),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("thresholds", sa.String(64)),
)

# Alert webhooks (gpuhistory/alerts; docs/alerts.md). One ``webhooks`` row per configured
# webhook and host, written by that host's deliverer: what it delivers (the URL only as
# scheme://host:port, never the secret), its cursor (the last event id it is done with:
# delivered, given up or not matching) and the retry state of the event at its head.
# ``version`` changes with every write, so a state never goes backwards. The delivery log
# holds one row per attempt (attempt 0: given up before any attempt).
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("url", sa.String(300), nullable=False),
    sa.Column("kinds", sa.JSON, nullable=False),
    sa.Column("gpus", sa.JSON),
    sa.Column("signed", sa.Boolean, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("cursor_event_id", sa.BigInteger, nullable=False),
    sa.Column("pending_event_id", sa.BigInteger),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_ms", sa.BigInteger),
    sa.Column("last_attempt_ms", sa.BigInteger),
    sa.Column("last_status", sa.String(16)),
    sa.Column("last_http_status", sa.SmallInteger),
    sa.Column("last_error", sa.String(200)),
    sa.Column("last_delivered_ms", sa.BigInteger),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.UniqueConstraint("host", "name", name="uq_webhooks_host_name"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", sa.Integer, sa.ForeignKey("webhooks.id"), nullable=False),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("http_status", sa.SmallInteger),
    sa.Column("error", sa.String(200)),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("next_retry_ms", sa.BigInteger),
    sa.CheckConstraint("status IN ('delivered', 'failed', 'rejected', 'gave_up')",
                       name="ck_webhook_deliveries_status"),
    sa.Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    sa.Index("ix_webhook_deliveries_event", "event_id"),
    sa.Index("ix_webhook_deliveries_ts", "ts_ms"),
)

# One sampler per host per database (gpuhistory/sampling/claim.py; docs/deployment.md): the
# claim of the process sampling ``host``, renewed by a heartbeat. Stale after
# ``stale_after_ms`` without one, or when its pid is gone from the same machine (``node``).
sampler_claims = sa.Table(
    "sampler_claims",
    metadata,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("process", sa.String(32), nullable=False),
    sa.Column("acquired_ms", sa.BigInteger, nullable=False),
    sa.Column("heartbeat_ms", sa.BigInteger, nullable=False),
    sa.Column("stale_after_ms", sa.BigInteger, nullable=False),
    sa.Column("version", sa.String(32)),  # gpuhistory's version in the holding process
)

# Fleet maintenance (gpuhistory/sampling/maintenance.py; docs/fleet.md): per fleet-wide job,
# who claimed its current period (``next_due_ms`` is that period's end), how often it was
# claimed, and how its last run went. A run in progress has ``busy_until_ms`` set: past it,
# its holder counts as dead and the job may be claimed again.
maintenance_runs = sa.Table(
    "maintenance_runs",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("runs", sa.BigInteger, nullable=False),
    sa.Column("period_ms", sa.BigInteger, nullable=False),
    sa.Column("next_due_ms", sa.BigInteger, nullable=False),
    sa.Column("busy_until_ms", sa.BigInteger),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("finished_ms", sa.BigInteger),
    sa.Column("last_error", sa.Text),
)


# PostgreSQL only (no SQLite table): the raw samples of incident windows whose daily
# partition retention dropped (gpuhistory/analytics/retention.py), copied just before the
# drop; the queries of raw history and post-mortems read samples and these rows together
# (gpuhistory/storage/sample_source.py). Same columns and key as samples, not partitioned.
postgres_metadata = sa.MetaData()

samples_kept = sa.Table(
    "samples_kept",
    postgres_metadata,
    *[sa.Column(c.name, c.type, nullable=c.nullable) for c in samples.columns],
    sa.PrimaryKeyConstraint("gpu_id", "ts_ms", name="samples_kept_pkey"),
)
