"""A long-lived thread that runs a backend's calls, so that a call that hangs cannot hang
the caller.

The caller hands a job over (one hand-off, not one thread per call) and waits for it with a
timeout. A job that does not finish in time is *abandoned*: the caller gets CallTimedOut
and the worker is marked stuck; its owner starts a fresh worker for the next calls. The
stuck thread finishes its job whenever the hung call returns (the job can see that it was
abandoned and stop early), runs the job's ``on_return`` and exits. A job that raises hands
its exception to the caller.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

_names = itertools.count(1)


class CallTimedOut(Exception):
    """The job did not finish within the timeout; it was abandoned."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(f"no answer within {timeout_s:g} s")
        self.job = job
        self.timeout_s = timeout_s


class Job:
    """One call for the worker. ``where`` is set by the call to say what it is doing (which
    GPU, which part), so that a timeout can name what hung; ``abandoned`` tells a job that
    comes back late that nobody waits for it any more."""

    __slots__ = ("abandoned", "done", "error", "fn", "on_return", "result", "where")

    def __init__(self, fn: Callable[[Job], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.where: Any = None
        self.on_return: Callable[[Job], None] | None = None


class Worker:
    """One daemon thread running jobs in order; replace it once ``stuck`` is True."""

    def __init__(self, name: str = "gpuhistory-nvml") -> None:
        self.stuck = False
        self._lock = threading.Lock()  # a job is either done or abandoned, never both
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-{next(_names)}",
                                        daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[Job], Any], timeout_s: float,
             abandon: Callable[[Job], None] | None = None) -> Any:
        """Run ``fn(job)`` on the worker; its result, or its exception, or CallTimedOut.

        On a timeout the job is marked abandoned and ``abandon(job)`` (if given) runs, before
        the job can finish and run its ``on_return``; the worker is then stuck. A job that
        finishes just as the wait ends counts as done.
        """
        job = Job(fn)
        self._queue.put(job)
        if not job.done.wait(timeout_s):
            with self._lock:  # the job cannot finish in between: on_return comes after
                late = not job.done.is_set()
                if late:
                    job.abandoned = True
                    self.stuck = True
                    if abandon is not None:
                        abandon(job)
            if late:
                raise CallTimedOut(job, timeout_s)
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Let the thread end after the job in hand (if it is not stuck in one)."""
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job.result = job.fn(job)
            except BaseException as exc:  # handed to the caller
                job.error = exc
            with self._lock:
                job.done.set()
                late = job.abandoned
            if late:  # came back late: this thread is no longer anyone's worker
                if job.on_return is not None:
                    job.on_return(job)
                return
