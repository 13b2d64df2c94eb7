"""Simulated hosts on one database and one fake clock: each host its own sampler (store,
pipeline, simulated backend replaying a trace) and its own sampler claim — the layout of a
fleet, in one process, with time injected. Used by the fleet API and browser tests and by
``python -m tests.sim_fleet`` (a 125-host dashboard to look at)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.config.store import ConfigStore
from gpuhistory.sampling.claim import SamplerClaim
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.sampling.sim import SimBackend
from gpuhistory.storage.log import LogStore

TRACE = Path(__file__).resolve().parents[1] / "gpuhistory" / "data" / "traces" / \
    "fleet4_derived.csv"


_PARSED: dict[tuple[Path, int], SimBackend] = {}


def _backend(clock: FakeClock, trace: Path, gpus: int) -> SimBackend:
    """A simulated backend starting now; the trace is parsed once per process (a backend's
    state after construction is read-only but for its start)."""
    template = _PARSED.get((trace, gpus))
    if template is None:
        template = _PARSED[trace, gpus] = SimBackend(clock, trace=trace, gpus=gpus)
    backend = copy.copy(template)
    backend.clock = clock
    backend.start_ms = clock.now_ms()
    return backend


class SimHost:
    """One host: its sampler and its claim (held while it runs)."""

    def __init__(self, engine: sa.Engine, clock: FakeClock, config: ConfigStore, name: str,
                 gpus: int, trace: Path = TRACE) -> None:
        self.name = name
        self.store = LogStore(engine, name)
        self.backend = _backend(clock, trace, gpus)
        self.sampler = Sampler(self.backend, Pipeline(self.store, "sim", config), self.store,
                               clock, interval=lambda: config().monitor_interval)
        self.claim = SamplerClaim(engine, name, clock, "sampler")
        self.running = True
        assert self.claim.try_acquire() is None, f"{name} is claimed already"

    def tick(self) -> None:
        """One tick and one heartbeat: what the host's sampler does each interval."""
        if self.running:
            self.sampler.tick()
            self.claim.renew()


class SimFleet:
    """Hosts named ``{prefix}{n:03d}``, started ``stagger_s`` apart on the trace so that
    they are in different states at one time."""

    def __init__(self, engine: sa.Engine, clock: FakeClock, config: ConfigStore,
                 hosts: int, gpus: int, prefix: str = "node-", stagger_s: float = 7.0) -> None:
        self.engine, self.clock, self.config = engine, clock, config
        self.prefix, self.gpus, self.stagger_s = prefix, gpus, stagger_s
        self.hosts: dict[str, SimHost] = {}
        self.add(hosts)

    def add(self, count: int) -> None:
        """``count`` more hosts, each sampled once as it starts."""
        for _ in range(count):
            name = f"{self.prefix}{len(self.hosts) + 1:03d}"
            self.hosts[name] = host = SimHost(self.engine, self.clock, self.config, name,
                                              self.gpus)
            host.tick()
            self.clock.advance(self.stagger_s)

    def tick(self, seconds: float = 1.0, times: int = 1) -> None:
        for _ in range(times):
            self.clock.advance(seconds)
            for host in self.hosts.values():
                host.tick()

    def stop(self, names: Iterable[str], release: bool = False) -> None:
        """The hosts' samplers stop ticking and renewing (``release``: they give the claim
        back, as a clean stop does; else they died holding it)."""
        for name in names:
            host = self.hosts[name]
            host.running = False
            if release:
                host.claim.release()


def main() -> None:  # pragma: no cover - a developer's look at 1,000 GPUs
    """Serve 125 simulated hosts x 8 GPUs on a SQLite file until interrupted:
    ``python -m tests.sim_fleet [PORT]``, then open http://127.0.0.1:PORT/#/fleet."""
    import sys
    import tempfile

    from waitress import serve

    from gpuhistory.api.app import create_app
    from gpuhistory.config.layers import load_static
    from gpuhistory.context import ServiceContext
    from gpuhistory.storage.engine import make_engine, upgrade

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8399
    engine = make_engine(str(Path(tempfile.mkdtemp()) / "fleet.db"))
    upgrade(engine)
    clock = FakeClock()
    config = ConfigStore(engine, load_static(environ={}), clock, refresh_ms=0)
    fleet = SimFleet(engine, clock, config, hosts=125, gpus=8, stagger_s=2.3)
    fleet.tick(1, times=30)
    fleet.stop(["node-017", "node-088"], release=True)
    fleet.tick(1, times=15)
    context = ServiceContext(engine=engine, host="node-001", clock=clock, config=config,
                             config_store=config)
    print(f"http://127.0.0.1:{port}/#/fleet", flush=True)
    serve(create_app(context), host="127.0.0.1", port=port, threads=4)


if __name__ == "__main__":  # pragma: no cover
    main()
