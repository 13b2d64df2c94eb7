"""The event log over HTTP: cursor paging and the resumable Server-Sent Events stream."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.postgres


def read_sse(response, count: int) -> list[dict]:
    """The first ``count`` events of an SSE response (id, event, data)."""
    events, current = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in current:
                events.append(current)
                if len(events) == count:
                    break
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = value
    return events


def test_events_page_with_cursor_and_filters(app) -> None:
    """since_id pages through the log; kind and gpu_id filter; last_id is the next cursor."""
    app.tick(5, times=30)  # GPU 1 overheats: throttle, critical, overheat events
    first = requests.get(f"{app.url}/api/gpu/events", params={"limit": 3}, timeout=5).json()
    assert first["count"] == 3 and [e["id"] for e in first["events"]] == sorted(
        e["id"] for e in first["events"])
    rest = requests.get(f"{app.url}/api/gpu/events", params={"since_id": first["last_id"]},
                        timeout=5).json()
    assert all(e["id"] > first["last_id"] for e in rest["events"])
    overheats = requests.get(f"{app.url}/api/gpu/events", params={"kind": "overheat"},
                             timeout=5).json()
    assert overheats["count"] == 1 and overheats["events"][0]["gpu_id"] == 1
    assert overheats["events"][0]["payload"]["threshold_celsius"] == 85
    gpu3 = requests.get(f"{app.url}/api/gpu/events", params={"gpu_id": 3}, timeout=5).json()
    assert {e["kind"] for e in gpu3["events"]} == {"state_change"}


def test_stream_sends_events_and_resumes_with_last_event_id(app) -> None:
    """The SSE stream replays from since_id, and a reconnect with Last-Event-ID misses none."""
    app.tick(5, times=30)
    with requests.get(f"{app.url}/api/gpu/events/stream", params={"since_id": 0},
                      stream=True, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = read_sse(response, 3)
    assert [int(e["id"]) for e in first] == [1, 2, 3]
    assert json.loads(first[0]["data"])["kind"] == first[0]["event"]
    with requests.get(f"{app.url}/api/gpu/events/stream",
                      headers={"Last-Event-ID": first[-1]["id"]}, stream=True,
                      timeout=10) as response:
        resumed = read_sse(response, 2)
    assert [int(e["id"]) for e in resumed] == [4, 5]


def test_stream_delivers_new_events_live(app) -> None:
    """Without a cursor the stream starts at the end and delivers what happens next."""
    with requests.get(f"{app.url}/api/gpu/events/stream", stream=True,
                      timeout=10) as response:
        requests.put(f"{app.url}/api/gpu/config", json={"temp_throttle": 80}, timeout=5)
        (event,) = read_sse(response, 1)
    assert event["event"] == "config_changed"
    assert json.loads(event["data"])["payload"]["changes"]["temp_throttle"]["new"] == 80


def test_bad_last_event_id_is_400(app) -> None:
    """A Last-Event-ID that is not an id gets the error shape."""
    response = requests.get(f"{app.url}/api/gpu/events/stream",
                            headers={"Last-Event-ID": "abc"}, timeout=5)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_argument"


def test_streams_beyond_half_the_threads_are_429_and_reads_still_answer(app) -> None:
    """Open streams hold worker threads: past the cap a stream is refused (429), and the
    threads left keep answering the API."""
    url = f"{app.url}/api/gpu/events/stream"
    held = [requests.get(url, stream=True, timeout=10) for _ in range(2)]
    try:
        for response in held:
            assert response.status_code == 200
        refused = requests.get(url, timeout=5)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert refused.json()["error"]["details"]["max_streams"] == 2
        status = requests.get(f"{app.url}/api/gpu/status/all", timeout=5)
        assert status.status_code == 200
    finally:
        for response in held:
            response.close()


def test_head_on_the_stream_takes_no_slot_and_closed_streams_give_theirs_back(engine) -> None:
    """With one slot: closed GET streams give it back; HEAD (whose body is never produced,
    so a slot released only by the body's end would be kept forever), OPTIONS, POST and a
    foreign page's GET (403) never take it; while a GET holds it another GET is 429 but
    HEAD is still answered."""
    from gpuhistory.api.app import create_app
    from gpuhistory.context import ServiceContext

    client = create_app(ServiceContext(engine=engine, host="testhost",
                                       max_streams=1)).test_client()
    for _ in range(3):
        response = client.get("/api/gpu/events/stream", buffered=False)
        assert response.status_code == 200
        response.close()  # body never iterated
    head = client.head("/api/gpu/events/stream")
    assert head.status_code == 200 and head.data == b""
    assert client.options("/api/gpu/events/stream").status_code == 200
    assert client.post("/api/gpu/events/stream").status_code == 405
    foreign = client.get("/api/gpu/events/stream", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and foreign.json["error"]["code"] == "cross_origin"
    with client.get("/api/gpu/events/stream", buffered=False) as held:
        assert held.status_code == 200
        refused = client.get("/api/gpu/events/stream")
        assert refused.status_code == 429
        assert client.head("/api/gpu/events/stream").status_code == 200  # HEAD: no slot


def test_a_stream_whose_client_left_frees_its_slot_within_a_poll(make_app) -> None:
    """A reloaded dashboard drops its stream without a word. With streams that would live a
    minute and both slots taken, the slots come back as soon as the clients close (the
    stream asks the server whether its client is gone), not at the stream's end or next
    write (the keep-alive, every HEARTBEAT_SECONDS): a new stream is answered 200 well
    within that."""
    import time

    from gpuhistory.api.events_api import HEARTBEAT_SECONDS, POLL_SECONDS

    app = make_app(stream_seconds=60.0)
    url = f"{app.url}/api/gpu/events/stream"
    held = [requests.get(url, stream=True, timeout=10) for _ in range(2)]
    assert [response.status_code for response in held] == [200, 200]
    assert requests.get(url, timeout=5).status_code == 429
    for response in held:
        response.close()
    deadline = time.monotonic() + HEARTBEAT_SECONDS - 4 * POLL_SECONDS
    while True:
        again = requests.get(url, stream=True, timeout=10)
        again.close()
        if again.status_code == 200:
            break
        assert again.status_code == 429
        assert time.monotonic() < deadline, "closed streams kept their slots"
        time.sleep(0.1)
