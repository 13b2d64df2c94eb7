"""Connections that cannot starve `gpuhistory serve`, over raw sockets against the real server.

Each test is named after a failure seen from outside: HEAD requests that kept event-stream
slots forever, trickling half-open connections that made `/healthz` unanswerable, and
ambiguous request framing that let bytes after a chunked body run as a second request.
One `serve` (sim backend) answers every test here; its limits are set through GPUHISTORY_*
variables, which also proves those reach the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.test_serve import free_port, gpuhistory, wait_ready

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 100
MAX_CLIENT_CONNECTIONS = 50
READ_TIMEOUT = 3
HOST = b"Host: localhost\r\n"


@dataclass
class Served:
    port: int
    url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("connections") / "serve.db"
    port = free_port()
    env = {**os.environ, "GPUHISTORY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
           "GPUHISTORY_MAX_CLIENT_CONNECTIONS": str(MAX_CLIENT_CONNECTIONS),
           "GPUHISTORY_READ_TIMEOUT": str(READ_TIMEOUT)}
    proc = subprocess.Popen(
        gpuhistory("serve", "--db", str(db), "--port", str(port), "--backend", "sim",
                   "--interval", "0.5"),  # 8 threads: 4 event-stream slots
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield Served(port, url)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr


def connect(served: Served, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=5,
                                    source_address=(source, 0))
    return sock


def exchange(served: Served, data: bytes, wait: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh connection; read until the server closes it (True) or
    ``wait`` seconds pass with it still open (False)."""
    with connect(served) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def status_lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def is_closed(sock: socket.socket, wait: float) -> bool:
    """Whether the server has closed ``sock`` (EOF or reset) within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            return False
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def healthz_seconds(served: Served, source: str = "127.0.0.1") -> float:
    """Seconds a fresh connection takes to get /healthz answered 200 (fails past 3 s)."""
    started = time.monotonic()
    with connect(served, source) as sock:
        sock.settimeout(3)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
        first = sock.recv(64)
    assert first.startswith(b"HTTP/1.1 200"), first
    return time.monotonic() - started


# -- event-stream slots ---------------------------------------------------------------------


def test_head_on_stream_with_foreign_origin_five_times_then_get_stream_answers_200(
        served: Served) -> None:
    """HEAD on the stream, from a foreign page or not, never keeps a stream slot: after
    five of each (one more than the four slots), a GET of the stream is answered 200."""
    head = b"HEAD /api/gpu/events/stream HTTP/1.1\r\n" + HOST
    for _ in range(5):
        answer, closed = exchange(served, head + b"Origin: http://evil.example\r\n"
                                  b"Connection: close\r\n\r\n")
        assert status_lines(answer) == [b"HTTP/1.1 403 FORBIDDEN"] and closed
        answer, closed = exchange(served, head + b"Connection: close\r\n\r\n")
        assert status_lines(answer) == [b"HTTP/1.1 200 OK"] and closed
        assert b"text/event-stream" in answer and answer.endswith(b"\r\n\r\n")  # no body
    with requests.get(f"{served.url}/api/gpu/events/stream", stream=True,
                      timeout=5) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")


def test_foreign_origin_get_of_the_stream_is_refused_without_a_slot(served: Served) -> None:
    """A web page of another origin cannot open the stream (403 cross_origin), so pages
    elsewhere cannot hold the dashboard's slots; a same-origin GET still gets one."""
    for _ in range(5):
        refused = requests.get(f"{served.url}/api/gpu/events/stream", timeout=5,
                               headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "cross_origin"
    with requests.get(f"{served.url}/api/gpu/events/stream", stream=True, timeout=5,
                      headers={"Origin": served.url}) as same_origin:
        assert same_origin.status_code == 200


# -- slow and idle connections -------------------------------------------------------------


def open_trickling(served: Served, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` connections that each sent a request line and one header, no end."""
    socks = []
    for _ in range(count):
        sock = connect(served, source)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n" + HOST)
        socks.append(sock)
    return socks


def trickle(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):  # closed by the server
            sock.sendall(b"X-Slow: 1\r\n")


def test_110_trickling_half_open_connections_leave_healthz_answering_within_3s(
        served: Served) -> None:
    """110 connections from one client, each trickling header lines: the client keeps at
    most its limit (the connections that waited longest are closed first), and /healthz
    is answered within 3 s throughout."""
    socks = open_trickling(served, 110)
    try:
        evicted = socks[:110 - MAX_CLIENT_CONNECTIONS]
        assert all(is_closed(sock, 3) for sock in evicted)
        for _ in range(3):
            trickle(socks)
            assert healthz_seconds(served) < 3
    finally:
        for sock in socks:
            sock.close()


def test_110_silent_connections_leave_healthz_answering_within_3s(served: Served) -> None:
    """110 connections from one client that send nothing at all: the oldest give way past
    the client's limit, and /healthz is answered within 3 s."""
    socks = [connect(served) for _ in range(110)]
    try:
        assert all(is_closed(sock, 3) for sock in socks[:110 - MAX_CLIENT_CONNECTIONS])
        assert healthz_seconds(served) < 3
    finally:
        for sock in socks:
            sock.close()


def test_trickling_from_many_addresses_past_the_total_limit_leaves_healthz_answering(
        served: Served) -> None:
    """Three addresses each under their own limit but over the total together: the
    connections that waited longest are closed, and a fourth address gets /healthz."""
    groups = [open_trickling(served, 40, f"127.0.0.{n}") for n in (2, 3, 4)]
    try:
        oldest = groups[0][:3 * 40 - MAX_CONNECTIONS]
        assert all(is_closed(sock, 3) for sock in oldest)
        assert not is_closed(groups[2][-1], 0.2)  # the newest are kept
        assert healthz_seconds(served, "127.0.0.5") < 3
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def test_a_request_trickled_past_the_read_timeout_is_closed(served: Served) -> None:
    """One connection, under every limit, trickling a header line every 0.2 s is closed
    once READ_TIMEOUT seconds have passed since its first byte, not before."""
    with connect(served) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n" + HOST)
        closed = False
        while not closed and time.monotonic() - started < READ_TIMEOUT + 4:
            trickle([sock])
            closed = is_closed(sock, 0.2)
        elapsed = time.monotonic() - started
    assert closed, "still open"
    assert READ_TIMEOUT - 0.1 <= elapsed <= READ_TIMEOUT + 4


# -- request framing -----------------------------------------------------------------------

SMUGGLED_SIZE = 777
SMUGGLED_BODY = json.dumps({"history_size": SMUGGLED_SIZE}).encode()
SMUGGLED = (b"PUT /api/gpu/config HTTP/1.1\r\n" + HOST
            + b"Content-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED_BODY) + SMUGGLED_BODY)
CHUNKED_END = b"0\r\n\r\n"
OUTER = b"POST /api/gpu/monitoring/stop HTTP/1.1\r\n" + HOST


def _framing_cases() -> dict[str, bytes]:
    after = CHUNKED_END + SMUGGLED
    return {
        "content_length_and_transfer_encoding":
            OUTER + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(after)
            + after,
        "transfer_encoding_and_content_length":
            OUTER + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + after,
        "doubled_transfer_encoding":
            OUTER + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + after,
        "transfer_encoding_listing_chunked_twice":
            OUTER + b"Transfer-Encoding: chunked, chunked\r\n\r\n" + after,
        "folded_transfer_encoding":
            OUTER + b"Transfer-Encoding:\r\n chunked\r\n\r\n" + after,
        "folded_other_header_before_transfer_encoding":
            OUTER + b"X-A: b\r\n\tTransfer-Encoding: chunked\r\n\r\n" + after,
        "identity_then_chunked":
            OUTER + b"Transfer-Encoding: identity, chunked\r\n\r\n" + after,
        "chunked_then_identity":
            OUTER + b"Transfer-Encoding: chunked, identity\r\n\r\n" + after,
        "unknown_transfer_coding":
            OUTER + b"Transfer-Encoding: xchunked\r\n\r\n" + after,
        "transfer_encoding_in_http_1_0":
            OUTER.replace(b"HTTP/1.1", b"HTTP/1.0")
            + b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + after,
    }


def history_size(served: Served) -> int:
    return requests.get(f"{served.url}/api/gpu/config", timeout=5).json()["config"]["history_size"]


def monitoring(served: Served) -> bool:
    return requests.get(f"{served.url}/healthz", timeout=5).json()["monitoring"]


def test_a_well_framed_chunked_request_is_served_and_the_connection_kept(
        served: Served) -> None:
    """The control: the same PUT, sent chunked on its own, is served (200) and the
    connection stays open for the next request — strict framing refuses only ambiguity,
    and the PUT the cases below smuggle would change the configuration if it ran."""
    body = json.dumps({"history_size": 321}).encode()
    request = (b"PUT /api/gpu/config HTTP/1.1\r\n" + HOST
               + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(body) + body + b"\r\n" + CHUNKED_END)
    answer, closed = exchange(served, request, wait=1.5)
    assert status_lines(answer) == [b"HTTP/1.1 200 OK"] and not closed
    assert history_size(served) == 321
    requests.put(f"{served.url}/api/gpu/config", json={"history_size": None}, timeout=5)


@pytest.mark.parametrize("case", list(_framing_cases()))
def test_ambiguous_framing_is_400_and_closed_with_nothing_smuggled(
        served: Served, case: str) -> None:
    """Each ambiguous framing is answered 400 with the connection closed: neither the
    request itself (stopping monitoring) nor the PUT after its chunked body (changing the
    configuration) takes effect."""
    before = history_size(served)
    assert before != SMUGGLED_SIZE and monitoring(served)
    answer, closed = exchange(served, _framing_cases()[case])
    lines = status_lines(answer)
    assert len(lines) == 1 and lines[0].split()[1] == b"400", answer[:200]
    assert closed
    assert history_size(served) == before
    assert monitoring(served)
