"""The HTTP server under the app (``gpuhistory.wsgi``), in-process on a free loopback port:
which head is ambiguous to frame, and which connection gives way over a limit."""

from __future__ import annotations

import dataclasses
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gpuhistory.wsgi.framing import framing_problem
from gpuhistory.wsgi.server import HttpServer
from gpuhistory.wsgi.settings import ConnectionLimits
from tests.conftest import REPO

LINE = b"POST / HTTP/1.1\r\nHost: localhost\r\n"


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: localhost",
    LINE + b"Content-Length: 5",
    LINE + b"Transfer-Encoding: chunked",
    LINE + b"transfer-encoding:\tChunked ",
    LINE + b"X-Transfer-Encoding: gzip\r\nContent-Length: 3",
])
def test_one_reading_of_the_framing_is_accepted(head: bytes) -> None:
    """A length alone, or one chunked coding (any case, optional whitespace) in HTTP/1.1."""
    assert framing_problem(head) is None


@pytest.mark.parametrize(("head", "problem"), [
    (LINE + b"Content-Length: 5\r\nTransfer-Encoding: chunked", "both"),
    (LINE + b"Transfer-Encoding: chunked\r\ncontent-length: 0", "both"),
    (LINE + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "more than once"),
    (LINE + b"Transfer-Encoding: chunked, chunked", "exactly"),
    (LINE + b"Transfer-Encoding: identity, chunked", "exactly"),
    (LINE + b"Transfer-Encoding: gzip", "exactly"),
    (LINE + b"Transfer-Encoding: ", "exactly"),
    (LINE + b"Transfer-Encoding:\r\n chunked", "folded"),
    (LINE + b"X-A: 1\r\n\tTransfer-Encoding: chunked", "folded"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", "HTTP/1.1"),
])
def test_ambiguous_framing_is_named(head: bytes, problem: str) -> None:
    """Each way a proxy and this server could read a request's end differently."""
    found = framing_problem(head)
    assert found is not None and problem in found


def test_limits_are_validated() -> None:
    """A limit that would refuse every connection, or a zero timeout, is refused."""
    for bad in ({"max_connections": 0}, {"max_client_connections": -1},
                {"read_timeout": 0}, {"idle_timeout": 0}):
        with pytest.raises(ValueError):
            ConnectionLimits(**bad)


def test_every_connection_setting_is_documented_with_its_default() -> None:
    """docs/configuration.md has a row per setting: its flag, its variable, its default."""
    text = (REPO / "docs" / "configuration.md").read_text()
    for field in dataclasses.fields(ConnectionLimits):
        flag, variable = "--" + field.name.replace("_", "-"), "GPUHISTORY_" + field.name.upper()
        row = re.search(rf"^\| `{flag}` \| `{variable}` \| ([^|]+) \|", text, re.M)
        assert row, f"{flag} missing from docs/configuration.md"
        assert row.group(1).strip() == str(field.default), flag


class Gate:
    """A WSGI app whose requests wait until the gate opens (requests in progress)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.entered.release()
        self.open.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


@pytest.fixture
def serve() -> Iterator[Callable[[ConnectionLimits], tuple[int, Gate]]]:
    started: list[tuple[HttpServer, threading.Thread, Gate]] = []

    def start(limits: ConnectionLimits) -> tuple[int, Gate]:
        gate = Gate()
        server = HttpServer(gate, "127.0.0.1", 0, threads=4, limits=limits)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread, gate))
        return server.port, gate

    yield start
    for server, thread, gate in started:
        gate.open.set()
        server.stop()
        thread.join(10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return False
        try:
            if not sock.recv(4096):
                return True
        except ConnectionResetError:
            return True
    return False


def busy(port: int, gate: Gate) -> socket.socket:
    """A connection whose request is in progress (held at the gate)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert gate.entered.acquire(timeout=5)
    return sock


def test_a_busy_connection_is_never_closed_for_a_new_one_of_its_client(serve) -> None:
    """Over the per-client limit with every connection of that client in progress, the new
    connection is closed and the busy one is answered once its request completes."""
    port, gate = serve(ConnectionLimits(max_client_connections=1))
    with busy(port, gate) as held, socket.create_connection(("127.0.0.1", port)) as extra:
        assert closed_within(extra, 3)
        gate.open.set()
        held.settimeout(5)
        assert held.recv(64).startswith(b"HTTP/1.1 200")


def test_over_the_total_limit_with_all_busy_a_new_connection_waits_its_turn(serve) -> None:
    """All connections in progress at the total limit: a new one is not accepted (it waits
    in the backlog, not closed) and is served once a place is free."""
    port, gate = serve(ConnectionLimits(max_connections=1, max_client_connections=0))
    with busy(port, gate) as held, socket.create_connection(("127.0.0.1", port)) as waiting:
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert not closed_within(waiting, 0.5)
        assert not gate.entered.acquire(timeout=0.2)  # not accepted while the other runs
        held.close()
        gate.open.set()
        waiting.settimeout(5)
        assert waiting.recv(64).startswith(b"HTTP/1.1 200")


def test_an_idle_connection_gives_way_to_a_new_one(serve) -> None:
    """At the total limit, the connection waiting longest for its request (idle after a
    response) is closed for a new one, which is served."""
    port, gate = serve(ConnectionLimits(max_connections=1, max_client_connections=0))
    gate.open.set()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert idle.recv(64).startswith(b"HTTP/1.1 200")  # kept alive, now idle
        with socket.create_connection(("127.0.0.1", port), timeout=5) as new:
            new.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert new.recv(64).startswith(b"HTTP/1.1 200")
            assert closed_within(idle, 3)
