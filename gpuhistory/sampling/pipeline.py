"""Readings in, log records out: classification across ticks for one host's GPUs.

Both the live sampler and ``import`` feed readings through a Pipeline; it keeps each GPU's
classification track, maps devices to their ``gpus`` rows and builds the rows a tick adds.
It performs no reads from hardware and writes only the ``gpus`` rows it must resolve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import sqlalchemy as sa

from gpuhistory.domain.classify import (
    GpuTrack,
    SteadyBand,
    classify,
    effective_state,
    level_with_hysteresis,
    memory_boundaries,
    steady_band,
    temperature_boundaries,
)
from gpuhistory.domain.config import Config
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.domain.reading import GpuIdentity, Reading, unavailable
from gpuhistory.domain.states import GPUState
from gpuhistory.sampling.hardware import HardwareChanges, HardwareFacts, HardwareTracker
from gpuhistory.sampling.plausibility import (
    MAX_TEMPERATURE_C,
    MIN_TEMPERATURE_C,
    cleared,
    described,
    implausible,
)
from gpuhistory.storage.log import (
    LogStore,
    TickRecord,
    event_row,
    sample_gpu_ts,
    sample_row,
    sample_tuple,
    transition_row,
)
from gpuhistory.storage.queries import cooldown_starts
from gpuhistory.storage.schema import samples, transitions

_NEW_TRACK = GpuTrack()
_new_latest = tuple.__new__  # a Latest without its Python-level __new__


class Latest(NamedTuple):
    """The newest classified reading of a GPU, kept in memory for in-process callers."""

    reading: Reading
    state: GPUState
    effective: GPUState
    ts_ms: int


class _Steady(NamedTuple):
    """What ``process``'s fast path needs of a GPU: its track and band, and the
    ``_resolve`` cache entry (identity key, gpus.id) that held when they were made."""

    track: GpuTrack
    band: SteadyBand
    entry: tuple[tuple[object, ...], int] | None
    gpu_id: int


class Pipeline:
    def __init__(
        self,
        store: LogStore,
        backend_name: str,
        config: Callable[[], Config],
        *,
        fill_missing: bool = True,
        row_tuples: bool = False,
    ) -> None:
        self.store = store
        # Samples rows as tuples in column order (what ``import`` writes in bulk) rather
        # than dicts keyed by column.
        self.row_tuples = row_tuples
        self.backend_name = backend_name
        self.config = config
        self.fill_missing = fill_missing
        self.tracks: dict[int, GpuTrack] = {}
        self.gpu_ids: dict[int, int] = {}  # index → gpus.id
        self.uuids: dict[int, str] = {}
        self.last_ts: dict[int, int] = {}
        self.latest: dict[int, Latest] = {}
        # index → the fields whose last reading was implausible, with their last plausible
        # values (what classification holds them at): gpuhistory/sampling/plausibility.py.
        self.invalid: dict[int, dict[str, Any]] = {}
        # index → (what the gpus row was resolved from, its id): skips rebuilding the
        # GpuIdentity and asking the store while nothing about the device changed.
        self._resolved: dict[int, tuple[tuple[object, ...], int]] = {}
        # index → (track, its SteadyBand, the _resolved entry, gpus.id) for process's fast
        # path; an entry is trusted only while that track and entry are still current.
        self._steady: dict[int, _Steady] = {}
        self._steady_config: Config | None = None  # the thresholds the bands were made with
        # What the log holds about processes and throttle counters (only changes are written).
        self.hardware = HardwareTracker()

    # -- restart -----------------------------------------------------------------------
    def restore(self, now_ms: int) -> None:
        """Rebuild each known GPU's track from the log, so a restart changes nothing."""
        config = self.config()
        for gpu in self.store.known_gpus(self.backend_name):
            self.gpu_ids[gpu.gpu_index] = gpu.id
            self.uuids[gpu.gpu_index] = gpu.uuid
            track, newest_ms = self._restored_track(gpu.id, gpu.memory_total_mib, config,
                                                    now_ms)
            self.tracks[gpu.gpu_index] = track
            if newest_ms is not None:
                self.last_ts[gpu.gpu_index] = newest_ms
        with self.store.engine.connect() as conn:
            self.hardware.restore(conn, self.gpu_ids.values())

    def _restored_track(self, gpu_id: int, total_mib: int | None, config: Config,
                        now_ms: int) -> tuple[GpuTrack, int | None]:
        t = transitions.c
        with self.store.engine.connect() as conn:
            last = conn.execute(
                sa.select(t.to_state).where(t.gpu_id == gpu_id)
                .order_by(t.ts_ms.desc(), t.id.desc()).limit(1)
            ).scalar()
            s = samples.c
            newest = conn.execute(
                sa.select(s.ts_ms, s.temperature_c, s.memory_used_mib)
                .where(s.gpu_id == gpu_id).order_by(s.ts_ms.desc()).limit(1)
            ).first()
            if last is None:
                return GpuTrack(), None if newest is None else newest.ts_ms
            left_hot, left_critical = cooldown_starts(conn, gpu_id, now_ms)
        state = GPUState(last)
        throttled_until = (None if left_hot is None
                           else left_hot + round(config.throttle_cooldown_seconds * 1000))
        critical_until = (None if left_critical is None
                          else left_critical + round(config.critical_pause_seconds * 1000))
        temp_level = mem_level = None
        if state is not GPUState.UNAVAILABLE and newest is not None:
            mem_pct = (None if newest.memory_used_mib is None or not total_mib
                       else 100.0 * newest.memory_used_mib / total_mib)
            # The level with the hysteresis band, capped at the stored state, is the level
            # the last tick ended on whenever that tick was classified with this config.
            temp_level = min(int(state), level_with_hysteresis(
                newest.temperature_c, temperature_boundaries(config), 3, config.hysteresis_c))
            mem_level = min(int(state), level_with_hysteresis(
                mem_pct, memory_boundaries(config), 3, config.hysteresis_pct))
        track = GpuTrack(
            state=state, temp_level=temp_level, mem_level=mem_level,
            effective=effective_state(state, now_ms, throttled_until, critical_until),
            throttled_until_ms=throttled_until, critical_until_ms=critical_until,
        )
        return track, None if newest is None else newest.ts_ms

    def resync(self, now_ms: int) -> None:
        """Forget what classification holds in memory and rebuild it from the log.

        After ticks were lost before reaching the log, the next transitions then continue
        from the states the log holds, not from states it never recorded.
        """
        self.tracks.clear()
        self.last_ts.clear()
        self.invalid.clear()
        self._resolved.clear()
        self._steady.clear()
        self.hardware = HardwareTracker()
        self.restore(now_ms)

    # -- ticks -------------------------------------------------------------------------
    def _resolve(self, reading: Reading, identities: Mapping[str, GpuIdentity],
                 ts_ms: int) -> int | None:
        known_id = self.gpu_ids.get(reading.index)
        if reading.uuid is None or (
            not reading.available and self.uuids.get(reading.index) == reading.uuid
        ):
            # An unavailable reading says nothing new about the card: keep its row as it is.
            return known_id
        known = identities.get(reading.uuid)
        key = (reading.uuid, reading.name, reading.memory_total_mib, reading.power_limit_w,
               known)
        cached = self._resolved.get(reading.index)
        if cached is not None and cached[0] == key:
            return cached[1]
        identity = GpuIdentity(
            index=reading.index, uuid=reading.uuid,
            name=reading.name if reading.name is not None else getattr(known, "name", None),
            memory_total_mib=reading.memory_total_mib,
            power_limit_w=reading.power_limit_w,
            slowdown_temp_c=getattr(known, "slowdown_temp_c", None),
            shutdown_temp_c=getattr(known, "shutdown_temp_c", None),
        )
        gpu_id = self.store.gpu_id(identity, self.backend_name, ts_ms)
        if self.gpu_ids.get(reading.index) != gpu_id:
            if self.gpu_ids.get(reading.index) is not None:
                self.tracks.pop(reading.index, None)  # another card now has this index
            self.gpu_ids[reading.index] = gpu_id
            self.uuids[reading.index] = reading.uuid
        self._resolved[reading.index] = (key, gpu_id)
        return gpu_id

    def process(
        self,
        ts_ms: int,
        readings: Iterable[Reading],
        identities: Mapping[str, GpuIdentity] | None = None,
        record: TickRecord | None = None,
    ) -> TickRecord:
        """Classify one tick's readings; the rows it adds go into ``record``.

        All or nothing: the classification state changes only once every reading of the
        tick is classified, so a tick that fails half-way (the ``gpus`` row of a new device
        cannot be written) leaves the pipeline as it was.
        """
        record = record if record is not None else TickRecord()
        config = self.config()
        if config is not self._steady_config and config != self._steady_config:
            self._steady.clear()  # new thresholds, new bands: classify in full again
        self._steady_config = config
        seen: set[int] = set()
        batch = list(readings)
        if self.fill_missing:
            reported = {r.index for r in batch}
            batch.extend(
                unavailable(index, "not reported by the backend", self.uuids.get(index))
                for index in self.gpu_ids if index not in reported
            )
        identities = identities or {}
        resolve, tracks, last_ts, latest = self._resolve, self.tracks, self.last_ts, self.latest
        new_tracks: dict[int, GpuTrack] = {}
        new_ts: dict[int, int] = {}
        new_latest: dict[int, Latest] = {}
        new_invalid: dict[int, dict[str, Any]] = {}
        rows: list[Any] = []
        make_row = sample_tuple if self.row_tuples else sample_row
        transitions: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        drafts: list[EventDraft] = []
        resolved, steady, invalid = self._resolved, self._steady, self.invalid
        new_steady: dict[int, _Steady] = {}
        for reading in batch:
            index = reading.index
            # Steady fast path: the same card as last tick (what ``_resolve`` would find in
            # its cache), every checked field plausible (``implausible`` would say None),
            # nothing held from an implausible reading, and the values inside the band of
            # the GPU's track (``classify`` would return the track as it is): just the row.
            cached = steady.get(index)
            if cached is not None and reading.available and index not in seen \
                    and index not in invalid:
                held_track, band, entry, steady_id = cached
                uuid = reading.uuid
                t, used, total = (reading.temperature_c, reading.memory_used_mib,
                                  reading.memory_total_mib)
                mt, util = reading.memory_temperature_c, reading.utilization_pct
                if (t is not None and used is not None and total
                        and band.temp_low <= t < band.temp_high
                        and band.mem_low <= 100.0 * used / total < band.mem_high
                        and MIN_TEMPERATURE_C < t < MAX_TEMPERATURE_C
                        and (mt is None or MIN_TEMPERATURE_C < mt < MAX_TEMPERATURE_C)
                        and 0 <= used <= total and (util is None or 0 <= util <= 100)
                        and tracks.get(index) is held_track and uuid is not None
                        and entry is not None and resolved.get(index) is entry
                        and entry[0] == (uuid, reading.name, total, reading.power_limit_w,
                                         identities.get(uuid))):
                    previous = last_ts.get(index)
                    ts = ts_ms if previous is None or previous < ts_ms else previous + 1
                    if band.from_ms <= ts < band.until_ms:
                        seen.add(index)
                        new_ts[index] = ts  # (the track stays: nothing to put back)
                        new_latest[index] = _new_latest(Latest, (reading, band.state,
                                                                 band.effective, ts))
                        rows.append(make_row(steady_id, ts, int(band.state), reading))
                        continue
            gpu_id = resolve(reading, identities, ts_ms)
            if gpu_id is None or index in seen:
                continue
            seen.add(index)
            previous = last_ts.get(index)
            ts = ts_ms if previous is None or previous < ts_ms else previous + 1
            new_ts[index] = ts
            judged = reading
            bad = implausible(reading) if reading.available else None
            if bad is not None or (reading.available and index in self.invalid):
                reading, judged, held = self._plausible(index, reading, bad, ts, gpu_id,
                                                        events, drafts)
                new_invalid[index] = held
            track = tracks.get(index)
            result = classify(judged, _NEW_TRACK if track is None else track, config, ts)
            new_tracks[index] = result.track
            if reading.available:
                new_band = steady_band(result.track, config, ts)
                if new_band is not None:
                    new_steady[index] = _Steady(result.track, new_band, resolved.get(index),
                                                 gpu_id)
            new_latest[index] = Latest(reading, result.state, result.effective, ts)
            rows.append(make_row(gpu_id, ts, int(result.state), reading))
            if result.transition is not None:
                transitions.append(transition_row(gpu_id, result.transition))
            for draft in result.events:
                events.append(event_row(gpu_id, draft))
                drafts.append(draft)
        tracks.update(new_tracks)
        steady.update(new_steady)
        last_ts.update(new_ts)
        latest.update(new_latest)
        for index, held in new_invalid.items():
            if held:
                self.invalid[index] = held
            else:
                self.invalid.pop(index, None)
        record.samples.extend(rows)
        record.transitions.extend(transitions)
        record.events.extend(events)
        record.drafts.extend(drafts)
        return record

    def _plausible(self, index: int, reading: Reading, bad: dict[str, Any] | None, ts: int,
                   gpu_id: int, events: list[dict[str, Any]], drafts: list[EventDraft],
                   ) -> tuple[Reading, Reading, dict[str, Any]]:
        """A reading with implausible fields, or the first after them: what to store, what
        to classify, and the last plausible value of each field still implausible.

        ``reading_invalid`` names the fields that turn implausible; ``reading_valid`` comes
        when none is left. The state is judged on the held values, never on garbage.
        """
        before = self.invalid.get(index, {})
        bad = bad or {}
        held: dict[str, Any] = {}
        last = self.latest.get(index)
        for name in bad:
            held[name] = (before[name] if name in before
                          else None if last is None else getattr(last.reading, name))
        fresh = {name: value for name, value in bad.items() if name not in before}
        draft = None
        if fresh:
            draft = EventDraft(kind=EventKind.READING_INVALID, ts_ms=ts, gpu_index=index,
                               payload=described(fresh, reading.memory_total_mib))
        elif before and not bad:
            draft = EventDraft(kind=EventKind.READING_VALID, ts_ms=ts, gpu_index=index,
                               payload={"fields": sorted(before)})
        if draft is not None:
            events.append(event_row(gpu_id, draft))
            drafts.append(draft)
        if not bad:
            return reading, reading, held
        stored = cleared(reading, bad)
        return stored, replace(stored, **held), held

    def process_hardware(self, facts: Sequence[HardwareFacts],
                         record: TickRecord) -> HardwareChanges:
        """Add the changes in processes, counters and XIDs to a tick's ``record``.

        Call after ``process`` for the same tick: facts are stamped like that tick's sample
        of their GPU. Pass the result to ``self.hardware.commit`` once the record is stored.
        """
        ts_by_gpu = dict(map(sample_gpu_ts, record.samples))
        added = TickRecord()  # joined only when complete: a failure adds nothing
        changes = self.hardware.diff(facts, self.gpu_ids, ts_by_gpu, added)
        record.extend(added)
        return changes
