"""``Client``: the REST API of a running gpuhistory server, from Python (standard library only).

    from gpuhistory import Client
    client = Client("http://127.0.0.1:8321")
    print(client.status(gpu_id=1)["state"])
    with client.lease(20_480, ttl_seconds=600, gpu_id=1) as lease:  # renewed while it runs
        train(lease.gpu_id)
    # released here, also when train() raised

Every method returns the API's JSON document (the field names of DESIGN §5). A refusal is
an ``ApiError`` carrying the HTTP status and the error body's ``code``, ``message`` and
``details``; a server that cannot be reached is ``ServiceUnavailable`` (status 0).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8321"
TimeArg = datetime | int | float | str | None

__all__ = ["DEFAULT_URL", "ApiError", "Client", "Lease", "ServiceUnavailable"]


class ApiError(Exception):
    """The server refused a request: HTTP ``status`` and the error body's fields.

    ``code`` is stable and machine-readable (``lease_not_found``, ``over_capacity``, ...);
    ``details`` carries the specifics (``available_mb`` for ``over_capacity``, say).
    """

    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}" if status == 0 else
                         f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class ServiceUnavailable(ApiError):
    """No answer at all: connection refused, DNS failure, reset, or ``timeout`` elapsed.

    ``status`` is 0; ``code`` is ``unreachable``, or ``timeout`` when the request may have
    reached the server (a timed-out allocate may have been granted).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(0, code, message)


def time_param(value: TimeArg) -> str | None:
    """A time for ``at``/``since``/``until``: datetime → ISO-8601 UTC, number → epoch seconds.

    A naive datetime is taken as UTC (as the server takes naive ISO strings); a string is
    sent as given.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a time must be a datetime, epoch seconds or a string, not a bool")
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        raise TypeError("a time must be a datetime (with a time of day), not a date")
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"a time must be a datetime, epoch seconds or a string, not {value!r}")


def default_allocation_id() -> str:
    """``<hostname>-<pid>-<8 hex>``: unique per call, and says where the lease came from."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname() or "")[:64].strip(".-_")
    return f"{host or 'client'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _error_from_body(status: int, reason: str, body: bytes) -> ApiError:
    """The ``{"error": {...}}`` body as an ApiError; anything else as ``http_<status>``."""
    try:
        doc = json.loads(body)
        error = doc["error"]
        return ApiError(status, str(error["code"]), str(error.get("message", "")),
                        error.get("details") or {})
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        message = reason or "error"
        if text:
            message = f"{message}: {text[:200]}"
        return ApiError(status, f"http_{status}", message)


class Client:
    """The gpuhistory REST API. Thread-safe: each call is one independent HTTP request."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = 10.0, host: str | None = None) -> None:
        """``host``: the fleet host whose GPUs and leases the calls mean (default: the
        server's own host); ``status_all``, ``leases`` and ``incidents`` also take ``"*"``."""
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        self.host = host

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- transport ---------------------------------------------------------------------
    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                body: Mapping[str, Any] | None = None,
                ok: tuple[int, ...] = (), headers: Mapping[str, str] | None = None) -> Any:
        """One request; the decoded JSON answer. Statuses in ``ok`` count as success too."""
        status, raw = self._send(method, path, params, body, ok, extra=headers)
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(status, "invalid_response",
                           f"{method} {path}: the answer is not JSON") from None

    def _send(self, method: str, path: str, params: Mapping[str, Any] | None = None,
              body: Mapping[str, Any] | None = None, ok: tuple[int, ...] = (),
              accept: str = "application/json",
              extra: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """One request: the status and the raw body (errors raised as in ``request``);
        ``extra``: more request headers."""
        url = self.base_url + path
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": accept, "User-Agent": "gpuhistory-client", **(extra or {})}
        data = None
        if body is not None:
            data = json.dumps(dict(body)).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, raw = exc.code, exc.read()
            if status not in ok:
                raise _error_from_body(status, exc.reason, raw) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise ServiceUnavailable(
                    "timeout", f"{method} {url}: no answer within {self.timeout} s") from None
            raise ServiceUnavailable(
                "unreachable", f"cannot reach {self.base_url}: {exc.reason}") from None
        except TimeoutError:
            raise ServiceUnavailable(
                "timeout", f"{method} {url}: no answer within {self.timeout} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceUnavailable(
                "unreachable", f"{method} {url}: {type(exc).__name__}: {exc}") from None
        return status, raw

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", path, params)

    def _post(self, path: str, **body: Any) -> dict[str, Any]:
        """POST a JSON body; None fields are left out (the server's defaults apply)."""
        body = {k: v for k, v in body.items() if v is not None}
        return self.request("POST", path, body=body)

    # -- status and metrics ------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``/healthz``: ``status`` ok, degraded or down (a 503 is returned, not raised)."""
        return self.request("GET", "/healthz", ok=(503,))

    def status(self, gpu_id: int | None = None, at: TimeArg = None,
               uuid: str | None = None) -> dict[str, Any]:
        """One GPU's state, reading, throttle advice and lease capacity (``at`` a past time):
        the card in slot ``gpu_id`` (default 0) then, or the card ``uuid``."""
        return self._get("/api/gpu/status", gpu_id=gpu_id, uuid=uuid, at=time_param(at),
                         host=self.host)

    def status_all(self, at: TimeArg = None, host: str | None = None) -> dict[str, Any]:
        """Every GPU of one host (``host="*"``: the whole fleet):
        ``{"host", "timestamp", "count", "gpus": [...]}``."""
        return self._get("/api/gpu/status/all", at=time_param(at), host=host or self.host)

    def system_status(self) -> dict[str, Any]:
        """GPUs, CPU and RAM in one answer (``/api/system/status``)."""
        return self._get("/api/system/status")

    def metrics(self, gpu_id: int | None = None, uuid: str | None = None) -> dict[str, Any]:
        """The GPU's latest sample, with the seed's GPUMetrics field names."""
        return self._get("/api/gpu/metrics", gpu_id=gpu_id, uuid=uuid, host=self.host)

    def history(self, gpu_id: int | None = None, since: TimeArg = None,
                until: TimeArg = None, limit: int | None = None,
                resolution: str | None = None, points: int | None = None,
                uuid: str | None = None) -> dict[str, Any]:
        """History in [since, until], oldest first.

        Without ``resolution``/``points``: raw ``samples``, the newest ``limit``. With them:
        about ``points`` ``buckets`` (default 500) from ``raw``, ``1m`` or ``1h`` data
        (``auto``: the coarsest with enough detail); since/until default to the last hour.
        """
        return self._get("/api/gpu/metrics/history", gpu_id=gpu_id, uuid=uuid,
                         since=time_param(since), until=time_param(until), limit=limit,
                         resolution=resolution, points=points, host=self.host)

    def trend(self, gpu_id: int | None = None, duration_minutes: float = 5,
              until: TimeArg = None, uuid: str | None = None) -> dict[str, Any]:
        """Temperature min/max/avg/first/last, slope in °C/min, direction, ETA to a threshold."""
        return self._get("/api/gpu/temperature/trend", gpu_id=gpu_id, uuid=uuid,
                         duration_minutes=duration_minutes, until=time_param(until),
                         host=self.host)

    def throttle(self, gpu_id: int | None = None, at: TimeArg = None,
                 uuid: str | None = None) -> dict[str, Any]:
        """``speed_multiplier``, ``should_throttle``, effective state, reason, cooldown left."""
        return self._get("/api/gpu/throttle/status", gpu_id=gpu_id, uuid=uuid,
                         at=time_param(at),
                         host=self.host)

    def events(self, since_id: int = 0, kind: str | None = None, gpu_id: int | None = None,
               limit: int = 100) -> dict[str, Any]:
        """Events with an id above ``since_id``, oldest first; ``last_id`` is the next cursor."""
        return self._get("/api/gpu/events", since_id=since_id, kind=kind,
                         gpu_id=gpu_id, limit=limit)

    # -- processes ---------------------------------------------------------------------
    def processes(self, job: str | int | None = None, user: str | int | None = None,
                  container: str | None = None, since: TimeArg = None,
                  until: TimeArg = None, gpu_id: int | None = None, uuid: str | None = None,
                  host: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """The compute processes alive in [since, until] that match (a Slurm ``job``, a
        ``user`` name or uid, a ``container`` id prefix, a GPU), and per card when they
        ran and the most memory one held: ``{"count", "truncated", "gpus", "processes"}``
        (``host="*"``: every host)."""
        return self._get("/api/gpu/processes", job=None if job is None else str(job),
                         user=None if user is None else str(user), container=container,
                         since=time_param(since), until=time_param(until), gpu_id=gpu_id,
                         uuid=uuid, host=host or self.host, limit=limit)

    # -- incidents ---------------------------------------------------------------------
    def incidents(self, gpu_id: int | None = None, since: TimeArg = None,
                  until: TimeArg = None, severity: str | None = None,
                  limit: int | None = None, host: str | None = None,
                  uuid: str | None = None) -> list[dict[str, Any]]:
        """Overheat incidents overlapping [since, until], newest first (``gpu_id``: every
        card of that slot; ``uuid``: one card; ``severity``: overheat or severe;
        ``host="*"``: every host)."""
        doc = self._get("/api/gpu/incidents", gpu_id=gpu_id, uuid=uuid, since=time_param(since),
                        until=time_param(until), severity=severity, limit=limit,
                        host=host or self.host)
        return doc["incidents"]

    def incident(self, incident_id: int, max_samples: int | None = None) -> dict[str, Any]:
        """The post-mortem of one incident (404 ``incident_not_found``): ``summary``, peak,
        reasons, transitions, leases, processes and the context ``samples``."""
        return self._get(f"/api/gpu/incidents/{int(incident_id)}", max_samples=max_samples)

    def incident_report(self, incident_id: int, host: str | None = None) -> str:
        """The incident's report: one self-contained HTML file, as text (404
        ``incident_not_found``)."""
        _, raw = self._send("GET", f"/api/gpu/incidents/{int(incident_id)}/report.html",
                            {"host": host or self.host}, accept="text/html")
        return raw.decode("utf-8")

    # -- leases ------------------------------------------------------------------------
    def available(self, gpu_id: int | None = None, uuid: str | None = None) -> dict[str, Any]:
        """Lease capacity of the card in the slot now: ``capacity_mb``, ``leased_mb``,
        ``available_mb``, device memory."""
        return self._get("/api/gpu/memory/available", gpu_id=gpu_id, uuid=uuid,
                         host=self.host)

    def leases(self, gpu_id: int | None = None, owner: str | None = None,
               status: str | None = None, limit: int | None = None,
               host: str | None = None) -> list[dict[str, Any]]:
        """Leases, newest first, of one GPU, owner or status (active, expired, released;
        ``host="*"``: every host)."""
        doc = self._get("/api/gpu/memory/leases", gpu_id=gpu_id, owner=owner, status=status,
                        limit=limit, host=host or self.host)
        return doc["leases"]

    def allocate(self, allocation_id: str, memory_mb: int, gpu_id: int | str = 0,
                 ttl_seconds: float | None = None, owner: str | None = None,
                 uuid: str | None = None, pids: Sequence[int] | None = None,
                 slurm_job: str | None = None, container: str | None = None
                 ) -> dict[str, Any]:
        """Lease ``memory_mb`` MiB; the lease with its ``lease_token`` (shown only here).

        ``gpu_id="any"``: the server chooses the GPU (``uuid``: only that card); the lease
        names it. ``pids``, ``slurm_job``, ``container``: the processes it covers.
        409 ``over_capacity`` (``details.available_mb``), ``no_gpu_fits`` (why, per GPU)
        or ``duplicate_allocation``.
        """
        return self._post("/api/gpu/memory/allocate", allocation_id=allocation_id,
                          memory_mb=memory_mb, gpu_id=gpu_id, ttl_seconds=ttl_seconds,
                          owner=owner, host=self.host, uuid=uuid,
                          pids=None if pids is None else list(pids), slurm_job=slurm_job,
                          container=container)

    def renew(self, allocation_id: str, lease_token: str | None,
              ttl_seconds: float | None = None) -> dict[str, Any]:
        """Extend the lease to now + ``ttl_seconds`` (default its own TTL)."""
        return self._post("/api/gpu/memory/renew", allocation_id=allocation_id,
                          lease_token=lease_token, ttl_seconds=ttl_seconds, host=self.host)

    def deallocate(self, allocation_id: str, lease_token: str | None) -> dict[str, Any]:
        """Release the lease now; the lease as released."""
        return self._post("/api/gpu/memory/deallocate", allocation_id=allocation_id,
                          lease_token=lease_token, host=self.host)

    def lease(self, memory_mb: int, ttl_seconds: float | None = 60, gpu_id: int | str = 0,
              allocation_id: str | None = None, owner: str | None = None,
              renew_every: float | None = None, pids: Sequence[int] | None = None,
              slurm_job: str | None = None, container: str | None = None) -> LeaseContext:
        """A lease held for a ``with`` block: granted on entry, renewed, released on exit.

        ``gpu_id="any"``: the server places it (``lease.gpu_id`` says where). The lease
        covers this process (``pids`` default: ``[os.getpid()]``; ``()`` names none) and
        ``slurm_job`` / ``container`` when given: their memory use is held against it.

        Renewed every ``renew_every`` seconds (default a third of the TTL) by a daemon
        thread. A renewal the server refuses (expired, released, wrong token) marks the
        lease ``lost`` and stops renewing; the block is not interrupted, so check
        ``lease.lost`` at safe points. Exit releases the lease, also when the block raises.
        """
        if renew_every is not None and renew_every <= 0:
            raise ValueError("renew_every must be greater than 0")
        if renew_every is not None and ttl_seconds is not None and renew_every >= ttl_seconds:
            raise ValueError("renew_every must be shorter than ttl_seconds, or the lease "
                             "expires between renewals")
        covers = {"pids": [os.getpid()] if pids is None else list(pids),
                  "slurm_job": slurm_job, "container": container}
        return LeaseContext(self, memory_mb, ttl_seconds, gpu_id,
                            allocation_id or default_allocation_id(), owner, renew_every,
                            covers)

    # -- control -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """``{"config": {...effective values}, "sources": {key: default|file|env|api}}``."""
        return self._get("/api/gpu/config")

    def update_config(self, changes: Mapping[str, Any] | None = None, *,
                      if_version: int | None = None, **more: Any) -> dict[str, Any]:
        """Change keys at runtime: ``update_config(temp_throttle=80)`` or a dict.

        A value of None removes that key's runtime change. All or nothing: 400 for an
        unknown key, 422 (naming each bad key) for a bad value, validated against the
        configuration the change produces. ``if_version`` (the ``version`` of ``config()``)
        applies the change only to that version: ApiError 412 ``precondition_failed`` when
        another change came first.
        """
        # None is meaningful here (clear a runtime change), so it is sent as null.
        body = {**(changes or {}), **more}
        headers = None if if_version is None else {"If-Match": f'"{int(if_version)}"'}
        return self.request("PUT", "/api/gpu/config", body=body,
                            headers=headers)

    def start_monitoring(self) -> dict[str, Any]:
        """Start sampling (idempotent); ``{"monitoring": true, ...}``."""
        return self._post("/api/gpu/monitoring/start")

    def stop_monitoring(self) -> dict[str, Any]:
        """Stop sampling (idempotent; a restart keeps it stopped)."""
        return self._post("/api/gpu/monitoring/stop")


class Lease:
    """A lease held by ``Client.lease``: what the server granted, and how renewing goes."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.allocation_id: str = doc["allocation_id"]
        self.memory_mb: int = doc["memory_mb"]
        self.gpu_id: int = doc["gpu_id"]
        self.uuid: str | None = doc.get("uuid")
        self.covers: dict[str, Any] = dict(doc.get("covers") or {})
        self.owner: str | None = doc.get("owner")
        self.lease_token: str = doc["lease_token"]
        self.ttl_seconds: float = doc["ttl_seconds"]
        self.granted_at: str | None = doc.get("granted_at")
        self.expires_at: str | None = doc.get("expires_at")
        self.renewals = 0
        self.lost = False
        self.released = False
        self.error: ApiError | None = None  # the last renewal or release failure
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "lost" if self.lost else "released" if self.released else "held"
        return (f"Lease({self.allocation_id!r}, {self.memory_mb} MiB of GPU {self.gpu_id}, "
                f"{state}, expires {self.expires_at}, renewals {self.renewals})")

    def _renewed(self, doc: Mapping[str, Any]) -> None:
        with self._lock:
            self.expires_at = doc.get("expires_at", self.expires_at)
            self.renewals += 1

    def _failed(self, error: ApiError, lost: bool) -> None:
        with self._lock:
            self.error = error
            self.lost = self.lost or lost


# Refusals after which the lease is gone for good; anything else (unreachable, timeouts,
# 5xx while the server restarts) is retried at the next renewal.
_GONE = {"lease_not_found", "lease_not_active", "lease_token_mismatch"}
_GONE_STATUSES = {401, 403, 404, 409}


class LeaseContext:
    """The context manager ``Client.lease`` returns (see there)."""

    def __init__(self, client: Client, memory_mb: int, ttl_seconds: float | None,
                 gpu_id: int | str, allocation_id: str, owner: str | None,
                 renew_every: float | None, covers: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.memory_mb = memory_mb
        self.ttl_seconds = ttl_seconds
        self.gpu_id = gpu_id
        self.allocation_id = allocation_id
        self.owner = owner
        self.renew_every = renew_every
        self.covers = dict(covers or {})
        self.lease: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        pids = self.covers.get("pids")
        doc = self.client.allocate(self.allocation_id, self.memory_mb, gpu_id=self.gpu_id,
                                   ttl_seconds=self.ttl_seconds, owner=self.owner,
                                   pids=pids or None, slurm_job=self.covers.get("slurm_job"),
                                   container=self.covers.get("container"))
        lease = self.lease = Lease(doc)
        every = self.renew_every if self.renew_every is not None else lease.ttl_seconds / 3
        self._thread = threading.Thread(target=self._renew_loop, args=(lease, every),
                                        name=f"gpuhistory-lease-{lease.allocation_id}",
                                        daemon=True)
        self._thread.start()
        return lease

    def _renew_loop(self, lease: Lease, every: float) -> None:
        while not self._stop.wait(every):
            try:
                doc = self.client.renew(lease.allocation_id, lease.lease_token)
            except ApiError as exc:
                gone = exc.code in _GONE or exc.status in _GONE_STATUSES
                lease._failed(exc, lost=gone)
                if gone:
                    log.warning("lease %r lost: %s", lease.allocation_id, exc)
                    return
                log.warning("renewing lease %r failed (will retry): %s",
                            lease.allocation_id, exc)
            else:
                lease._renewed(doc)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.client.timeout + 1)
        lease = self.lease
        if lease is None:
            return
        try:
            self.client.deallocate(lease.allocation_id, lease.lease_token)
        except ApiError as error:
            if error.code in ("lease_not_active", "lease_not_found"):
                lease._failed(error, lost=True)  # it expired or was released meanwhile
                return
            lease.error = error
            if exc_type is not None:  # never hide the block's own exception
                log.warning("could not release lease %r: %s", lease.allocation_id, error)
                return
            raise
        lease.released = True

