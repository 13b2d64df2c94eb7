"""In-process callbacks on events (the seed's ``register_callback``).

Fed from the same events the log stores, after they are committed. A callback that raises
is logged and forgotten for that event; it never breaks sampling.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gpuhistory.clock import iso_utc
from gpuhistory.domain.events import EventKind
from gpuhistory.domain.metrics import GPUMetrics

log = logging.getLogger(__name__)

ANY = "*"


@dataclass(frozen=True, slots=True)
class Event:
    """What a callback receives: the stored event, and the GPU's metrics at that tick."""

    id: int | None
    kind: str
    gpu_id: int | None
    timestamp: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    metrics: GPUMetrics | None = None

    # The seed's callbacks read metrics fields straight off their argument.
    def __getattr__(self, name: str) -> Any:
        metrics = object.__getattribute__(self, "metrics")
        if metrics is not None and hasattr(metrics, name):
            return getattr(metrics, name)
        raise AttributeError(name)


Callback = Callable[[Event], object]


class CallbackRegistry:
    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._lock = threading.Lock()

    def register(self, kind: str, fn: Callback) -> None:
        """Call ``fn(event)`` for every event of ``kind`` (an EventKind value, or "*")."""
        if kind != ANY and kind not in {k.value for k in EventKind}:
            raise ValueError(f"unknown event kind {kind!r}; one of {[k.value for k in EventKind]}")
        with self._lock:
            self._callbacks[kind].append(fn)

    def unregister(self, kind: str, fn: Callback) -> None:
        with self._lock:
            if fn in self._callbacks.get(kind, []):
                self._callbacks[kind].remove(fn)

    def __bool__(self) -> bool:
        return any(self._callbacks.values())

    def dispatch(self, events: Iterable[Event]) -> None:
        for event in events:
            with self._lock:
                targets = [*self._callbacks.get(event.kind, ()), *self._callbacks.get(ANY, ())]
            for fn in targets:
                try:
                    fn(event)
                except Exception:
                    log.exception("callback %r for %s event failed", fn, event.kind)


def make_event(event_id: int | None, kind: str, gpu_id: int | None, ts_ms: int,
               payload: dict[str, Any], metrics: GPUMetrics | None = None) -> Event:
    return Event(id=event_id, kind=kind, gpu_id=gpu_id, timestamp=iso_utc(ts_ms),
                 payload=payload, metrics=metrics)
