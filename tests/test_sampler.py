"""The sampler and pipeline: ticks driven by a fake clock, persisted in one transaction."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from gpuhistory.callbacks import CallbackRegistry, Event
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.domain.reading import GpuIdentity, Reading, unavailable
from gpuhistory.domain.states import GPUState
from gpuhistory.sampling.backend import BackendHealth
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.sampling.sim import SimBackend
from gpuhistory.storage.log import LogStore
from tests.conftest import FLEET4

pytestmark = pytest.mark.postgres


class ScriptedBackend:
    """A backend whose next readings the test sets (fakes only the hardware boundary)."""

    name = "sim"

    def __init__(self, count: int = 2) -> None:
        self.temps = [40] * count
        self.lost: set[int] = set()

    def identities(self) -> list[GpuIdentity]:
        return [GpuIdentity(index=i, uuid=f"GPU-s-{i}", name=f"card {i}", memory_total_mib=1000)
                for i in range(len(self.temps))]

    def read(self) -> list[Reading]:
        return [
            unavailable(i, "GPU is lost", f"GPU-s-{i}") if i in self.lost else
            Reading(index=i, uuid=f"GPU-s-{i}", name=f"card {i}", temperature_c=t,
                    memory_used_mib=100, memory_total_mib=1000, power_w=123.46)
            for i, t in enumerate(self.temps)
        ]

    def health(self) -> BackendHealth:
        return BackendHealth(ok=True)

    def close(self) -> None:
        pass


def make_sampler(store: LogStore, clock: FakeClock, backend, config: Config = DEFAULT_CONFIG):
    pipeline = Pipeline(store, backend.name, lambda: config)
    pipeline.restore(clock.now_ms())
    return Sampler(backend, pipeline, store, clock, interval=1.0)


def count(engine: sa.Engine, table: str, where: str = "1=1") -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar()


def test_tick_persists_one_sample_per_gpu_with_the_clock_time(store, clock, engine) -> None:
    """One tick writes one row per GPU stamped with the injected clock, power in deciwatts."""
    sampler = make_sampler(store, clock, ScriptedBackend(2))
    sampler.tick()
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT ts_ms, temperature_c, power_dw, state FROM samples")
                            ).all()
    assert rows == [(clock.now_ms(), 40, 1235, 0), (clock.now_ms(), 40, 1235, 0)]
    assert count(engine, "gpus") == 2
    assert count(engine, "transitions") == 2  # the initial state of each GPU


def test_sampler_driven_by_fake_clock_records_transitions_at_tick_times(store, clock, engine):
    """Heating GPU 1 between ticks gives one transition at exactly that tick's time."""
    backend = ScriptedBackend(2)
    sampler = make_sampler(store, clock, backend)
    sampler.tick()
    clock.advance(3)
    backend.temps[1] = 80
    sampler.tick()
    clock.advance(3)
    sampler.tick()
    with engine.connect() as conn:
        t = conn.execute(sa.text(
            "SELECT g.gpu_index, t.ts_ms, t.from_state, t.to_state, t.cause FROM transitions t "
            "JOIN gpus g ON g.id = t.gpu_id WHERE t.from_state IS NOT NULL")).all()
    assert t == [(1, clock.now_ms() - 3000, 0, 2, "temperature")]
    assert count(engine, "events", "kind = 'throttle'") == 1


def test_one_gpu_lost_others_keep_sampling(store, clock, engine) -> None:
    """GPU_IS_LOST on one GPU of four: it turns UNAVAILABLE with gpu_lost; three keep going."""
    backend = ScriptedBackend(4)
    sampler = make_sampler(store, clock, backend)
    sampler.tick()
    backend.lost.add(2)
    for _ in range(3):
        clock.advance(1)
        sampler.tick()
    assert count(engine, "events", "kind = 'gpu_lost'") == 1
    assert count(engine, "samples", "state = 4") == 3
    assert count(engine, "samples", "state = 0") == 4 + 3 * 3
    backend.lost.clear()
    clock.advance(1)
    sampler.tick()
    assert count(engine, "events", "kind = 'gpu_found'") == 1


def test_callbacks_fire_after_commit_and_a_failing_one_is_contained(store, clock) -> None:
    """register_callback: the seed's critical callback sees metrics; a raising one is logged."""
    backend = ScriptedBackend(1)
    sampler = make_sampler(store, clock, backend)
    seen: list[Event] = []
    registry = CallbackRegistry()
    registry.register("critical", lambda e: seen.append(e))
    registry.register("critical", lambda e: 1 / 0)
    sampler.callbacks = registry
    sampler.tick()
    backend.temps[0] = 91
    clock.advance(1)
    sampler.tick()  # must not raise
    assert len(seen) == 1
    assert seen[0].temperature_celsius == 91 and seen[0].id is not None
    assert seen[0].state == "CRITICAL"


def test_clock_jumping_backwards_never_duplicates_a_tick(store, clock, engine) -> None:
    """A wall clock stepped back still yields strictly increasing (gpu, ts) keys."""
    sampler = make_sampler(store, clock, ScriptedBackend(1))
    sampler.tick()
    clock.advance(-10)
    sampler.tick()
    with engine.connect() as conn:
        ts = [r[0] for r in conn.execute(sa.text("SELECT ts_ms FROM samples ORDER BY ts_ms"))]
    assert len(ts) == 2 and ts[1] == ts[0] + 1


def test_restart_restores_state_without_a_spurious_transition(engine, clock) -> None:
    """A new process on the same log continues each GPU's state and cooldown."""
    backend = ScriptedBackend(1)
    backend.temps[0] = 80
    first = make_sampler(LogStore(engine, "testhost"), clock, backend)
    first.tick()
    clock.advance(1)
    backend.temps[0] = 50
    first.tick()  # left THROTTLED: cooldown until +30 s
    before = count(engine, "transitions")
    clock.advance(5)
    second = make_sampler(LogStore(engine, "testhost"), clock, backend)
    second.tick()
    assert count(engine, "transitions") == before
    track = second.pipeline.tracks[0]
    assert track.state is GPUState.OPTIMAL and track.effective is GPUState.THROTTLED
    clock.advance(30)
    second.tick()
    assert count(engine, "events", "kind = 'resume'") == 1


def test_known_gpu_missing_from_backend_is_marked_unavailable(engine, clock) -> None:
    """After a restart, a GPU the log knew but the backend no longer reports is UNAVAILABLE."""
    make_sampler(LogStore(engine, "testhost"), clock, ScriptedBackend(2)).tick()
    clock.advance(1)
    make_sampler(LogStore(engine, "testhost"), clock, ScriptedBackend(1)).tick()
    with engine.connect() as conn:
        state = conn.execute(sa.text(
            "SELECT s.state FROM samples s JOIN gpus g ON g.id = s.gpu_id "
            "WHERE g.gpu_index = 1 ORDER BY s.ts_ms DESC LIMIT 1")).scalar()
    assert state == GPUState.UNAVAILABLE


def test_sim_backend_replays_the_trace_in_real_time(store, clock, engine) -> None:
    """The sim backend follows the fake clock through the trace: GPU 1 heats, GPU 3 idles."""
    backend = SimBackend(clock, trace=FLEET4)
    sampler = make_sampler(store, clock, backend)
    temps = []
    for _ in range(0, 200, 10):
        sampler.tick()
        temps.append([r.temperature_c for r in backend.read()])
        clock.advance(10)
    assert max(t[1] for t in temps) >= 85 and max(t[3] for t in temps) < 40
    with engine.connect() as conn:
        backends = conn.execute(sa.text("SELECT DISTINCT backend FROM gpus")).scalars().all()
    assert backends == ["sim"]
    assert count(engine, "events", "kind = 'overheat'") == 1


def test_sim_backend_widens_to_eight_gpus_and_loops(clock) -> None:
    """--sim-gpus 8 on a 4-GPU trace reports 8 GPUs; past the end the trace loops."""
    backend = SimBackend(clock, trace=FLEET4, gpus=8)
    first = [r.temperature_c for r in backend.read()]
    assert len(first) == 8 and len({r.uuid for r in backend.read()}) == 8
    clock.advance(backend.duration_s)
    assert [r.temperature_c for r in backend.read()] == first


def test_scheduler_runs_ticks_and_stops_cleanly(store, engine) -> None:
    """The APScheduler job really runs on its own thread and stop() logs monitoring_stopped."""
    from gpuhistory.clock import SystemClock

    clock = SystemClock()
    backend = ScriptedBackend(1)
    pipeline = Pipeline(store, backend.name, lambda: DEFAULT_CONFIG)
    sampler = Sampler(backend, pipeline, store, clock, interval=0.05)
    import threading

    done = threading.Event()
    registry = CallbackRegistry()
    ticks: list[int] = []
    original = sampler.tick

    def counting_tick():
        rec = original()
        ticks.append(1)
        if len(ticks) >= 3:
            done.set()
        return rec

    sampler.tick = counting_tick  # type: ignore[method-assign]
    sampler.callbacks = registry
    sampler.start()
    assert done.wait(10)
    sampler.stop()
    assert count(engine, "events", "kind = 'monitoring_started'") == 1
    assert count(engine, "events", "kind = 'monitoring_stopped'") == 1
    assert count(engine, "samples") >= 3


def test_a_lost_gpu_keeps_its_recorded_name_and_memory(store, clock, engine) -> None:
    """An unavailable reading carries no facts; the gpus row keeps name and total memory."""
    backend = ScriptedBackend(1)
    sampler = make_sampler(store, clock, backend)
    sampler.tick()
    backend.lost.add(0)
    clock.advance(1)
    sampler.tick()
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT name, memory_total_mib FROM gpus")).one()
    assert tuple(row) == ("card 0", 1000)
