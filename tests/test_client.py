"""``gpuhistory.Client`` against a real server over HTTP: the whole ``serve`` stack, in a thread.

The server is ``gpuhistory.service.Service`` (sampler, lease reaper, waitress) on a free
port with the simulated fleet, started in a background thread (so it installs no signal
handlers) and stopped with ``Service.stop()``. Only the lease context-manager tests use
real time, for renewals, and each waits on a condition in a bounded loop.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gpuhistory import Client
from gpuhistory.client import ApiError, Lease, ServiceUnavailable, time_param
from gpuhistory.service import ServeSettings, Service
from tests.conftest import FLEET4

API_TOKEN = "test-api-token-0123456789"


class RunningService:
    """``Service`` serving on a free loopback port in a thread, until ``close()``."""

    def __init__(self, db: Path, api_token: str | None = None, interval: float = 0.5) -> None:
        self.before = set(threading.enumerate())
        self.service = Service(ServeSettings(
            db=str(db), port=0, backend="sim", trace=str(FLEET4), interval=interval,
            host_name="testhost", threads=4, api_token=api_token))
        self.thread = threading.Thread(target=self.service.run, name="test-service")
        self.thread.start()
        wait_for(lambda: self.service.port is not None, "the server to listen")
        self.url = f"http://127.0.0.1:{self.service.port}"
        probe = Client(self.url, timeout=2)
        wait_for(lambda: (probe.health().get("last_sample") or {}).get("timestamp"),
                 "the first sample")

    def close(self) -> None:
        self.service.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the service did not stop"
        wait_for(lambda: not (set(threading.enumerate()) - self.before),
                 "the service's threads to end")


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is true (bounded; never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def served(migrated_db: Path) -> Iterator[RunningService]:
    running = RunningService(migrated_db)
    yield running
    running.close()


@pytest.fixture
def client(served: RunningService) -> Client:
    return Client(served.url, timeout=5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- reads -----------------------------------------------------------------------------
def test_every_read_method_answers_with_the_api_documents(client: Client) -> None:
    """health, status, status_all, system_status, metrics, history, trend, throttle,
    available, events and config each return the endpoint's JSON document."""
    health = client.health()
    assert health["status"] in ("ok", "degraded") and health["backend"]["name"] == "sim"

    one = client.status(gpu_id=1)
    assert one["gpu_id"] == 1 and one["backend"] == "sim" and "throttling" in one
    everything = client.status_all()
    assert everything["count"] == 4 and [g["gpu_id"] for g in everything["gpus"]] == [0, 1, 2, 3]
    assert client.system_status()["gpu"]["count"] == 4

    metrics = client.metrics(gpu_id=3)
    assert metrics["gpu_id"] == 3 and metrics["temperature_celsius"] is not None

    now = datetime.now(UTC)
    history = client.history(gpu_id=0, since=now - timedelta(minutes=5),
                             until=time.time() + 60, limit=2)
    assert 1 <= history["count"] <= 2 and history["samples"][0]["gpu_id"] == 0

    trend = client.trend(gpu_id=0, duration_minutes=1, until=now + timedelta(seconds=30))
    assert trend["samples"] >= 1 and trend["trend"] in ("rising", "falling", "stable")

    throttle = client.throttle(gpu_id=0, at=now + timedelta(seconds=1))
    assert throttle["gpu_id"] == 0 and 0.0 <= throttle["speed_multiplier"] <= 1.0
    assert isinstance(throttle["should_throttle"], bool)

    available = client.available(gpu_id=2)
    assert available["gpu_id"] == 2 and available["available_mb"] == available["capacity_mb"]

    started = client.events(kind="service_started")
    assert started["count"] == 1 and started["events"][0]["kind"] == "service_started"
    later = client.events(since_id=started["last_id"], limit=5)
    assert all(e["id"] > started["last_id"] for e in later["events"])

    config = client.config()
    assert config["config"]["temp_throttle"] == 85 and config["sources"]["temp_throttle"]


def test_status_at_a_past_time_accepts_datetime_epoch_and_string(client: Client) -> None:
    """``at`` as a datetime, epoch seconds or an ISO string asks about the same moment."""
    first = client.history(gpu_id=0, limit=1)["samples"][0]["timestamp"]
    moment = datetime.fromisoformat(first.replace("Z", "+00:00"))
    for at in (moment, moment.timestamp(), first):
        doc = client.status(gpu_id=0, at=at)
        assert doc["timestamp"] <= first
    with pytest.raises(ApiError) as err:
        client.status(gpu_id=0, at="not a time")
    assert err.value.status == 400 and err.value.code == "invalid_argument"


def test_time_param_formats() -> None:
    """datetime → ISO-8601 UTC (naive taken as UTC), numbers → epoch seconds, str as is."""
    plus2 = timezone(timedelta(hours=2))
    assert time_param(datetime(2026, 11, 26, 5, 12, tzinfo=plus2)) == "2026-11-26T03:12:00.000Z"
    assert time_param(datetime(2026, 11, 26, 3, 12)) == "2026-11-26T03:12:00.000Z"
    assert time_param(1795716364) == "1795716364"
    assert time_param(1795716364.5) == "1795716364.5"
    assert time_param("2026-11-26T03:12:00Z") == "2026-11-26T03:12:00Z"
    assert time_param(None) is None
    with pytest.raises(TypeError):
        time_param(True)


# -- leases ----------------------------------------------------------------------------
def test_allocate_list_renew_deallocate(client: Client) -> None:
    """allocate returns the lease with its token; leases lists it; renew extends it;
    deallocate releases it and gives the memory back."""
    before = client.available(gpu_id=1)["available_mb"]
    lease = client.allocate("job-1", 4096, gpu_id=1, ttl_seconds=120, owner="alice")
    assert lease["allocation_id"] == "job-1" and lease["status"] == "active"
    assert lease["lease_token"] and lease["ttl_seconds"] == 120 and lease["owner"] == "alice"
    assert client.available(gpu_id=1)["available_mb"] == before - 4096

    mine = client.leases(owner="alice")
    assert [x["allocation_id"] for x in mine] == ["job-1"]
    assert "lease_token" not in mine[0] or mine[0]["lease_token"] is None
    assert client.leases(gpu_id=0) == []
    assert [x["allocation_id"] for x in client.leases(status="active")] == ["job-1"]

    renewed = client.renew("job-1", lease["lease_token"], ttl_seconds=600)
    assert renewed["ttl_seconds"] == 600 and renewed["expires_at"] > lease["expires_at"]

    released = client.deallocate("job-1", lease["lease_token"])
    assert released["status"] == "released"
    assert client.available(gpu_id=1)["available_mb"] == before
    assert [x["allocation_id"] for x in client.leases(status="released")] == ["job-1"]


def test_errors_carry_status_code_message_and_details(client: Client) -> None:
    """404 unknown lease, 409 over capacity (with available_mb) and duplicate id, 403
    wrong lease token, 404 unknown GPU, 422 invalid value: each an ApiError with its code."""
    with pytest.raises(ApiError) as err:
        client.renew("no-such-lease", "whatever")
    assert (err.value.status, err.value.code) == (404, "lease_not_found")
    assert err.value.details == {"allocation_id": "no-such-lease"}

    capacity = client.available(gpu_id=0)["available_mb"]
    with pytest.raises(ApiError) as err:
        client.allocate("too-big", capacity + 1)
    assert (err.value.status, err.value.code) == (409, "over_capacity")
    assert err.value.details["available_mb"] == capacity
    assert "available" in err.value.message and str(err.value).startswith("409 over_capacity")

    lease = client.allocate("held", 1024)
    with pytest.raises(ApiError) as err:
        client.allocate("held", 1024)
    assert (err.value.status, err.value.code) == (409, "duplicate_allocation")

    with pytest.raises(ApiError) as err:
        client.deallocate("held", "not-the-token")
    assert (err.value.status, err.value.code) == (403, "lease_token_mismatch")
    assert "not-the-token" not in str(err.value)
    client.deallocate("held", lease["lease_token"])
    with pytest.raises(ApiError) as err:
        client.deallocate("held", lease["lease_token"])
    assert (err.value.status, err.value.code) == (409, "lease_not_active")

    with pytest.raises(ApiError) as err:
        client.status(gpu_id=9)
    assert (err.value.status, err.value.code) == (404, "gpu_not_found")

    with pytest.raises(ApiError) as err:
        client.allocate("zero", 0)
    assert (err.value.status, err.value.code) == (422, "validation_failed")
    assert "memory_mb" in err.value.details["fields"]


def test_unreachable_server_is_service_unavailable() -> None:
    """No server on the port: ServiceUnavailable, an ApiError with status 0, code unreachable."""
    client = Client(closed_port_url(), timeout=2)
    with pytest.raises(ServiceUnavailable) as err:
        client.status()
    assert isinstance(err.value, ApiError)
    assert (err.value.status, err.value.code) == (0, "unreachable")
    with pytest.raises(ValueError):
        Client("localhost:8321")


def test_a_reply_that_is_not_the_error_shape_still_raises_api_error() -> None:
    """A proxy's HTML 502 (not the JSON error shape) is ApiError(502, 'http_502', ...)."""

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>Bad Gateway</html>"
            self.send_response(502, "Bad Gateway")
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
        with pytest.raises(ApiError) as err:
            client.metrics()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not isinstance(err.value, ServiceUnavailable)
    assert (err.value.status, err.value.code) == (502, "http_502")
    assert "Bad Gateway" in err.value.message and err.value.details == {}


# -- configuration and monitoring ------------------------------------------------------
def test_update_config_applies_whole_or_not_at_all(client: Client) -> None:
    """update_config changes keys (source api); a bad value is 422 naming the key, an
    unknown key 400, and neither changes anything; None clears a runtime change."""
    changed = client.update_config(temp_throttle=80)
    assert changed["config"]["temp_throttle"] == 80 and changed["sources"]["temp_throttle"] == "api"
    assert changed["changes"]["temp_throttle"] == {"old": 85, "new": 80}

    with pytest.raises(ApiError) as err:
        client.update_config({"temp_throttle": 80, "memory_critical": 150})
    assert (err.value.status, err.value.code) == (422, "validation_failed")
    assert "memory_critical" in err.value.details["fields"]
    with pytest.raises(ApiError) as err:
        client.update_config(temp_throtle=80)
    assert err.value.status == 400
    assert client.config()["config"]["memory_critical"] == 95

    cleared = client.update_config(temp_throttle=None)
    assert cleared["config"]["temp_throttle"] == 85
    assert cleared["sources"]["temp_throttle"] != "api"


def test_stop_and_start_monitoring(client: Client) -> None:
    """stop_monitoring and start_monitoring switch sampling off and on (and are logged)."""
    assert client.stop_monitoring()["monitoring"] is False
    assert client.health()["monitoring"] is False
    assert client.start_monitoring()["monitoring"] is True
    kinds = [e["kind"] for e in client.events(limit=1000)["events"]]
    assert kinds.count("monitoring_stopped") == 1 and kinds.count("monitoring_started") == 2


def test_api_token_is_sent_as_bearer(migrated_db: Path) -> None:
    """On a server with an API token, mutations need it: none → 401, wrong → 403, right → ok;
    reads stay open."""
    running = RunningService(migrated_db, api_token=API_TOKEN)
    try:
        anonymous = Client(running.url, timeout=5)
        assert anonymous.status(gpu_id=0)["gpu_id"] == 0
        with pytest.raises(ApiError) as err:
            anonymous.allocate("job", 1024)
        assert (err.value.status, err.value.code) == (401, "unauthorized")
        with pytest.raises(ApiError) as err:
            Client(running.url, token="wrong-token-0123456789").allocate("job", 1024)
        assert (err.value.status, err.value.code) == (403, "forbidden")
        admin = Client(running.url, token=API_TOKEN, timeout=5)
        lease = admin.allocate("job", 1024)
        assert lease["status"] == "active"
        # The API token also stands in for the lease token (an operator's override).
        assert admin.deallocate("job", None)["status"] == "released"
    finally:
        running.close()


# -- the lease context manager ---------------------------------------------------------
def lease_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gpuhistory-lease-")]


def test_lease_context_renews_while_the_block_runs_and_releases(client: Client) -> None:
    """client.lease: granted on entry, renewed in the background (expires_at moves on),
    released on exit; the renewal thread is gone when the block ends."""
    before = client.available(gpu_id=2)["available_mb"]
    with client.lease(2048, ttl_seconds=1.5, gpu_id=2, owner="ctx", renew_every=0.2) as lease:
        assert isinstance(lease, Lease) and lease.lease_token and lease.gpu_id == 2
        first_expiry = lease.expires_at
        assert client.available(gpu_id=2)["available_mb"] == before - 2048
        wait_for(lambda: lease.renewals >= 3, "three renewals", timeout=2.5)
        assert lease.expires_at is not None and first_expiry is not None
        assert lease.expires_at > first_expiry
        assert not lease.lost and lease.error is None
    assert lease.released and not lease_threads()
    assert client.available(gpu_id=2)["available_mb"] == before
    (row,) = client.leases(owner="ctx")
    assert row["status"] == "released" and row["allocation_id"] == lease.allocation_id
    host, pid, suffix = lease.allocation_id.rsplit("-", 2)
    assert host and pid.isdigit() and len(suffix) == 8


def test_lease_context_releases_when_the_block_raises(client: Client) -> None:
    """An exception in the block propagates unchanged, and the lease is released anyway."""
    with pytest.raises(RuntimeError, match="job failed"), \
            client.lease(1024, ttl_seconds=30, allocation_id="crashing-job") as lease:
        raise RuntimeError("job failed")
    assert lease.released and not lease_threads()
    (row,) = client.leases(owner=None, status="released")
    assert row["allocation_id"] == "crashing-job"


def test_a_lost_lease_is_reported_and_exit_tolerates_it(client: Client) -> None:
    """When a renewal is refused (here: the lease was released behind the holder's back),
    the Lease says lost with the error, renewing stops, and exit does not raise."""
    with client.lease(1024, ttl_seconds=1.5, renew_every=0.1) as lease:
        client.deallocate(lease.allocation_id, lease.lease_token)
        wait_for(lambda: lease.lost, "the renewal to notice", timeout=2.5)
        assert lease.error is not None and lease.error.code == "lease_not_active"
        wait_for(lambda: not lease_threads(), "renewing to stop", timeout=2.5)
        renewals = lease.renewals
    assert lease.lost and not lease.released and lease.renewals == renewals


def test_a_lease_that_does_not_fit_raises_on_entry(client: Client) -> None:
    """Over capacity: entering raises ApiError 409 and no renewal thread is started;
    renew_every must be shorter than the TTL."""
    capacity = client.available(gpu_id=0)["capacity_mb"]
    with pytest.raises(ApiError) as err, client.lease(capacity + 1):
        pass
    assert err.value.code == "over_capacity" and not lease_threads()
    with pytest.raises(ValueError):
        client.lease(1024, ttl_seconds=1, renew_every=1)
