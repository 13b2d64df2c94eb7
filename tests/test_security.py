"""Security: the API token on every mutating endpoint, lease tokens, cross-origin changes,
the bind rule, and secrets kept out of answers, logs, events and the database file.

The mutating endpoints are enumerated from the served OpenAPI document, not from a list
here, so an endpoint added later is covered (or this test fails for it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.storage.engine import make_engine, upgrade
from tests.conftest import App
from tests.test_hostile_input import assert_error, snapshot
from tests.test_serve import free_port, gpuhistory, wait_ready

pytestmark = pytest.mark.slow

TOKEN = "security-" + secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MUTATING = ("post", "put", "patch", "delete")
LEASE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43,}$")  # 256 bits, URL-safe base64


class Recorder(logging.Handler):
    """Every log record of the process while the module runs, formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class Secured:
    """The API (with the API token, or none) on a SQLite file; every answer is kept."""

    def __init__(self, db: Path, token: str | None = TOKEN) -> None:
        self.db = db
        self.auth = AUTH if token else {}
        self.engine = make_engine(db)
        upgrade(self.engine)
        self.app = App(self.engine, FakeClock(), token=token)
        self.app.tick(1.0, times=5)
        self.url = self.app.url
        self.answers: list[str] = []
        self.lease_tokens: list[str] = []

    def send(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        response = requests.request(method, f"{self.url}{path}", json=body, timeout=10,
                                    headers=headers, **kwargs)
        self.answers.append(response.text)
        token = response.json().get("lease_token") if response.headers.get(
            "Content-Type", "").startswith("application/json") else None
        if isinstance(token, str):
            self.lease_tokens.append(token)
        return response

    def grant(self, allocation_id: str, memory_mb: int = 100) -> str:
        granted = self.send("POST", "/api/gpu/memory/allocate",
                            {"allocation_id": allocation_id, "memory_mb": memory_mb}, self.auth)
        assert granted.status_code == 201, granted.text
        return str(granted.json()["lease_token"])

    def lease(self, allocation_id: str) -> dict[str, Any]:
        leases = self.send("GET", "/api/gpu/memory/leases").json()["leases"]
        return next(x for x in leases if x["allocation_id"] == allocation_id
                    and x["status"] == "active")

    def close(self) -> None:
        self.app.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    handler = Recorder()
    root, ours = logging.getLogger(), logging.getLogger("gpuhistory")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    ours.setLevel(level)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[Secured]:
    server = Secured(tmp_path_factory.mktemp("security") / "security.db")
    yield server
    server.close()


@pytest.fixture(scope="module")
def tokenless(tmp_path_factory: pytest.TempPathFactory,
              recorder: Recorder) -> Iterator[Secured]:
    """Without an API token (the loopback default): only lease tokens guard leases."""
    server = Secured(tmp_path_factory.mktemp("tokenless") / "tokenless.db", token=None)
    yield server
    server.close()


def mutating_operations(url: str) -> list[tuple[str, str]]:
    doc = requests.get(f"{url}/api/openapi.json", timeout=10).json()
    return [(method.upper(), re.sub(r"\{[^}]+\}", "1", path))
            for path, ops in doc["paths"].items() for method in ops if method in MUTATING]


def test_the_document_secures_every_mutating_operation(secured: Secured) -> None:
    """Each POST/PUT/PATCH/DELETE in the document declares the bearer scheme."""
    doc = requests.get(f"{secured.url}/api/openapi.json", timeout=10).json()
    mutating = [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()
                if m in MUTATING]
    assert len(mutating) >= 6  # allocate, renew, deallocate, start, stop, PUT config
    for method, path, op in mutating:
        assert op.get("security") == [{"bearer": []}], (method, path)
        assert {"401", "403"} <= set(op["responses"]), (method, path)


# What a client might send instead of the right header: (headers, query, status, code).
WRONG_CREDENTIALS = [
    ({}, None, 401, "unauthorized"),
    ({"Authorization": "Bearer wrong-token-0123456789"}, None, 403, "forbidden"),
    ({"Authorization": f"Bearer {TOKEN}x"}, None, 403, "forbidden"),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, None, 403, "forbidden"),
    ({"Authorization": f"Bearer {TOKEN.upper()}"}, None, 403, "forbidden"),
    ({"Authorization": "Bearer"}, None, 401, "unauthorized"),
    ({"Authorization": TOKEN}, None, 401, "unauthorized"),
    ({"Authorization": f"Basic {TOKEN}"}, None, 401, "unauthorized"),
    ({"Authorization": f"Token {TOKEN}"}, None, 401, "unauthorized"),
    ({"X-Api-Token": TOKEN}, None, 401, "unauthorized"),
    ({"Cookie": f"token={TOKEN}"}, None, 401, "unauthorized"),
    ({}, {"token": TOKEN, "access_token": TOKEN}, 401, "unauthorized"),
]


def test_every_mutating_endpoint_refuses_without_the_token(secured: Secured) -> None:
    """No token, a wrong one, a near miss, another scheme, another place: 401 or 403 in the
    error shape, nothing changed, the token never echoed; the right token gets past."""
    operations = mutating_operations(secured.url)
    body = {"allocation_id": "guarded", "memory_mb": 10, "lease_token": "t"}
    for method, path in operations:
        for headers, query, status, code in WRONG_CREDENTIALS:
            before = snapshot(secured.engine)
            response = secured.send(method, path, dict(body) if method != "PUT"
                                    else {"temp_throttle": 80}, headers, params=query)
            assert_error(response, status, code)
            assert TOKEN not in response.text
            assert snapshot(secured.engine) == before, (method, path, headers)
        passed = secured.send(method, path, {}, AUTH)
        assert passed.status_code not in (401, 403), (method, path, passed.text)
        if path.endswith("/monitoring/start"):  # no sampling behind the next snapshots
            assert secured.send("POST", "/api/gpu/monitoring/stop", None,
                                AUTH).status_code == 200


def test_reads_stay_open_and_never_show_the_token(secured: Secured) -> None:
    for path in ("/api/gpu/status/all", "/api/gpu/config", "/healthz", "/metrics",
                 "/api/gpu/events?limit=10000", "/api/system/status",
                 "/api/gpu/memory/leases"):
        response = secured.send("GET", path)
        assert response.status_code == 200, path
        assert TOKEN not in response.text, path


def test_lease_tokens_are_long_random_and_distinct(secured: Secured) -> None:
    """256-bit URL-safe tokens: 50 grants, 50 different tokens with no shared prefix, none
    derived from the lease id; the database keeps only their sha256."""
    tokens = [secured.grant(f"random-{i}", 1) for i in range(50)]
    assert all(LEASE_TOKEN.match(t) for t in tokens)
    assert len(set(tokens)) == 50 and len({t[:8] for t in tokens}) == 50
    assert not any(f"random-{i}" in t for i, t in enumerate(tokens))
    with secured.engine.connect() as conn:
        stored = dict(conn.execute(sa.text(
            "SELECT allocation_id, token_hash FROM leases WHERE allocation_id LIKE 'random-%'")
        ).all())
    for i, token in enumerate(tokens):
        assert stored[f"random-{i}"] == hashlib.sha256(token.encode()).hexdigest()
        assert secured.send("POST", "/api/gpu/memory/deallocate", {
            "allocation_id": f"random-{i}", "lease_token": token}).status_code == 401
        assert secured.send("POST", "/api/gpu/memory/deallocate", {
            "allocation_id": f"random-{i}", "lease_token": token},
            AUTH).status_code == 200


def test_a_lease_token_works_only_for_its_own_lease(tokenless: Secured) -> None:
    """A's token cannot renew or release B (403, B unchanged); nor can a near miss, a guess,
    or the token of an earlier lease with the same id. (With an API token configured, that
    token in the header may act on any lease: docs/security.md.)"""
    server = tokenless
    token_a, token_b = server.grant("lease-a"), server.grant("lease-b")
    b_before = server.lease("lease-b")
    guesses = [token_a, token_b[:-1] + ("A" if token_b[-1] != "A" else "B"), token_b + "=",
               token_b.upper() if token_b.upper() != token_b else token_b.lower(),
               *(secrets.token_urlsafe(32) for _ in range(20))]
    for guess in guesses:
        for path, extra in (("renew", {"ttl_seconds": 9999}), ("deallocate", {})):
            response = server.send("POST", f"/api/gpu/memory/{path}", {
                "allocation_id": "lease-b", "lease_token": guess, **extra})
            error = assert_error(response, 403, "lease_token_mismatch")
            assert guess not in response.text and token_b not in response.text
            assert error["details"] == {"allocation_id": "lease-b"}
    for path in ("renew", "deallocate"):  # no token at all
        response = server.send("POST", f"/api/gpu/memory/{path}", {"allocation_id": "lease-b"})
        assert_error(response, 400, "invalid_argument")
    assert server.lease("lease-b") == b_before
    # After release, the id may be granted again: the old token is useless for the new one.
    assert server.send("POST", "/api/gpu/memory/deallocate", {
        "allocation_id": "lease-b", "lease_token": token_b}).status_code == 200
    token_b2 = server.grant("lease-b")
    response = server.send("POST", "/api/gpu/memory/renew", {
        "allocation_id": "lease-b", "lease_token": token_b})
    assert_error(response, 403, "lease_token_mismatch")
    assert server.send("POST", "/api/gpu/memory/renew", {
        "allocation_id": "lease-b", "lease_token": token_b2}).status_code == 200


def test_a_lease_token_is_not_an_api_token(secured: Secured) -> None:
    token = secured.grant("not-an-api-token")
    response = secured.send("POST", "/api/gpu/memory/allocate",
                            {"allocation_id": "x", "memory_mb": 1},
                            {"Authorization": f"Bearer {token}"})
    assert_error(response, 403, "forbidden")
    assert token not in response.text


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:1", "null",
                                    "https://127.0.0.1"])
def test_changes_from_a_page_of_another_origin_are_refused(tmp_path: Path,
                                                           origin: str) -> None:
    """Without a token (the loopback default) a web page could post a form to 127.0.0.1:
    a mutating request whose Origin is another origin is refused and changes nothing;
    the same origin, and clients that send no Origin, are served."""
    engine = make_engine(tmp_path / "origin.db")
    upgrade(engine)
    app = App(engine, FakeClock())
    try:
        before = snapshot(engine)
        for path, body in (("/api/gpu/monitoring/start", None),
                           ("/api/gpu/memory/allocate", {"allocation_id": "csrf",
                                                         "memory_mb": 1})):
            response = requests.post(f"{app.url}{path}", json=body, timeout=10,
                                     headers={"Origin": origin})
            assert_error(response, 403, "cross_origin")
        assert not app.sampler.running and snapshot(engine) == before
        same = requests.post(f"{app.url}/api/gpu/monitoring/start", timeout=10,
                             headers={"Origin": app.url})
        assert same.status_code == 200 and app.sampler.running
        assert requests.post(f"{app.url}/api/gpu/monitoring/stop",
                             timeout=10).status_code == 200  # no Origin: not a browser
        assert requests.get(f"{app.url}/api/gpu/status", headers={"Origin": origin},
                            timeout=10).status_code == 200  # reads are not changes
    finally:
        app.close()
        engine.dispose()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8321", "10.0.0.7",
                                  "127.0.0.1.evil.example", "localhost.evil.example"])
def test_a_tokenless_server_answers_only_loopback_host_names(tmp_path: Path,
                                                             host: str) -> None:
    """DNS rebinding: a hostile name resolved to 127.0.0.1 is same-origin for the browser,
    but its requests carry that name; without a token they are refused, reads included."""
    engine = make_engine(tmp_path / "rebind.db")
    upgrade(engine)
    app = App(engine, FakeClock())
    try:
        before = snapshot(engine)
        for method, path in (("GET", "/api/gpu/status/all"), ("GET", "/"),
                             ("POST", "/api/gpu/monitoring/start")):
            response = requests.request(method, f"{app.url}{path}", timeout=10,
                                        headers={"Host": host})
            assert_error(response, 403, "host_not_allowed")
            assert host not in response.text
        assert not app.sampler.running and snapshot(engine) == before
        port = app.url.rsplit(":", 1)[1]
        for good in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert requests.get(f"{app.url}/api/gpu/status", headers={"Host": good},
                                timeout=10).status_code == 200
    finally:
        app.close()
        engine.dispose()


def test_with_a_token_any_host_name_is_served(tmp_path: Path) -> None:
    """A token-guarded server is meant to be reached by its network names."""
    engine = make_engine(tmp_path / "named.db")
    upgrade(engine)
    app = App(engine, FakeClock(), token=secrets.token_urlsafe(32))
    try:
        response = requests.get(f"{app.url}/api/gpu/status/all",
                                headers={"Host": "gpu-07.example:8321"}, timeout=10)
        assert response.status_code == 200
    finally:
        app.close()
        engine.dispose()


def test_public_binds_need_a_proper_token(tmp_path: Path) -> None:
    """An IPv6 wildcard without a token, or 0.0.0.0 with a token under 16 characters, is
    refused before anything starts (0.0.0.0 without a token: tests/test_serve.py and
    tests/test_roles.py)."""
    cases = [
        (["serve", "--host", "::", "--backend", "sim"], {}, "refusing to bind ::"),
        (["serve", "--host", "0.0.0.0", "--backend", "sim"], {"GPUHISTORY_TOKEN": "short"},
         "GPUHISTORY_TOKEN must be at least 16 characters"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "GPUHISTORY_TOKEN"}
    procs = [subprocess.Popen(gpuhistory(*args, "--db", str(tmp_path / f"{i}.db")),
                              env={**env, **extra}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, (args, extra, _) in enumerate(cases)]
    for proc, (args, _, message) in zip(procs, cases, strict=True):
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 2, (args, stderr)
        assert message in stderr, stderr
        assert "short" not in stderr  # not even a rejected token is printed


def test_a_serving_process_never_logs_a_secret(tmp_path: Path) -> None:
    """A real `serve` on 0.0.0.0 with a token and -vv (debug logs): grants, renewals,
    releases, wrong tokens, a wrong API token; neither token appears in its output."""
    token = "serve-" + secrets.token_urlsafe(24)
    port = free_port()
    proc = subprocess.Popen(
        gpuhistory("-vv", "serve", "--db", str(tmp_path / "s.db"), "--host", "0.0.0.0",
                   "--port", str(port), "--backend", "sim", "--interval", "0.2"),
        env={**os.environ, "GPUHISTORY_TOKEN": token}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    lease_tokens = []
    try:
        wait_ready(url, proc)
        for i in range(3):
            granted = requests.post(f"{url}/api/gpu/memory/allocate", headers=auth, json={
                "allocation_id": f"s{i}", "memory_mb": 10}, timeout=10)
            lease_tokens.append(granted.json()["lease_token"])
        requests.post(f"{url}/api/gpu/memory/renew", headers=auth, json={
            "allocation_id": "s0", "lease_token": lease_tokens[0]}, timeout=10)
        requests.post(f"{url}/api/gpu/memory/renew", headers=auth, json={
            "allocation_id": "s0", "lease_token": lease_tokens[1]}, timeout=10)
        requests.post(f"{url}/api/gpu/memory/deallocate", headers=auth, json={
            "allocation_id": "s1", "lease_token": lease_tokens[1]}, timeout=10)
        requests.post(f"{url}/api/gpu/memory/allocate", json={"allocation_id": "x"},
                      headers={"Authorization": f"Bearer {token}-wrong"}, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "lease 's0' granted" in stderr  # the logs were written, at the levels asked
    for secret in (token, *lease_tokens):
        assert secret not in stdout and secret not in stderr


def test_no_secret_in_answers_logs_events_or_the_database_file(
        secured: Secured, tokenless: Secured, recorder: Recorder) -> None:
    """After everything above: neither the API token nor any lease token handed out is in
    a later answer, a log line, an event, or the bytes of the SQLite file and its WAL."""
    for i, server in enumerate((secured, tokenless)):  # (also when run on its own)
        token = server.grant(f"secret-check-{i}")
        server.send("POST", "/api/gpu/memory/renew", {
            "allocation_id": f"secret-check-{i}", "lease_token": token + "x"}, server.auth)
    events = secured.send("GET", "/api/gpu/events?limit=10000").json()["events"]
    assert any(e["kind"] == "lease_granted" for e in events)
    granted = secured.lease_tokens + tokenless.lease_tokens
    answers = [a for a in secured.answers + tokenless.answers
               if '"lease_token"' not in a]  # grants show their own
    logs = "\n".join(recorder.lines)
    assert "granted" in logs  # the lease log lines were captured
    files = b"".join(p.read_bytes() for server in (secured, tokenless)
                     for p in server.db.parent.glob(f"{server.db.name}*"))
    for secret in (TOKEN, *granted):
        assert not any(secret in a for a in answers)
        assert secret not in logs
        assert secret.encode() not in files
        assert not any(secret in str(e["payload"]) for e in events)
