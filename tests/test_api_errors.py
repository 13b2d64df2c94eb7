"""One JSON error shape for every error of every endpoint, and the API token."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.postgres

TOKEN = "s3cret-token-0123456789"

# (method, path, query, json body or raw bytes, expected status)
ERROR_CASES = [
    ("get", "/api/gpu/status", {"gpu_id": 42}, None, 404),
    ("get", "/api/gpu/status", {"gpu_id": "zero"}, None, 400),
    ("get", "/api/gpu/status", {"at": "not a time"}, None, 400),
    ("get", "/api/gpu/status", {"bogus": 1}, None, 400),
    ("get", "/api/gpu/status/all", {"at": "inf"}, None, 400),
    ("get", "/api/gpu/metrics", {"gpu_id": 42}, None, 404),
    ("get", "/api/gpu/metrics/history", {"limit": 0}, None, 422),
    ("get", "/api/gpu/metrics/history", {"since": "yesterday"}, None, 400),
    ("get", "/api/gpu/temperature/trend", {"duration_minutes": -1}, None, 422),
    ("get", "/api/gpu/temperature/trend", {"duration_minutes": "nan"}, None, 422),
    ("get", "/api/gpu/throttle/status", {"gpu_id": 1024}, None, 422),
    ("get", "/api/gpu/memory/available", {"gpu_id": 7}, None, 404),
    ("get", "/api/gpu/memory/leases", {"status": "lost"}, None, 422),
    ("get", "/api/gpu/events", {"since_id": -1}, None, 422),
    ("get", "/api/gpu/events", {"kind": "DROP TABLE"}, None, 422),
    ("post", "/api/gpu/memory/allocate", {}, b"{not json", 400),
    ("post", "/api/gpu/memory/allocate", {}, b"", 400),
    ("post", "/api/gpu/memory/allocate", {}, b"[1, 2]", 400),
    ("post", "/api/gpu/memory/allocate", {}, {"allocation_id": "x", "memory_mb": 10**9}, 422),
    ("post", "/api/gpu/memory/renew", {}, {"allocation_id": "none", "lease_token": "x"}, 404),
    ("post", "/api/gpu/memory/deallocate", {}, {"allocation_id": "none"}, 400),
    ("put", "/api/gpu/config", {}, {"temp_normal": 10}, 422),
    ("put", "/api/gpu/config", {}, b"42", 400),
    ("get", "/api/gpu/nothing-here", {}, None, 404),
    ("delete", "/api/gpu/config", {}, None, 405),
    ("post", "/api/gpu/memory/allocate", {}, b"x" * (65 * 1024), 413),
]


def send(url: str, method: str, path: str, query: dict, body, headers=None):
    kwargs = {"params": query, "timeout": 5, "headers": dict(headers or {})}
    if isinstance(body, bytes):
        kwargs["data"] = body
        kwargs["headers"]["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    return requests.request(method.upper(), f"{url}{path}", **kwargs)


def test_every_error_has_the_one_shape_and_the_right_status(app) -> None:
    """Walk the error cases of every endpoint: the status, and {"error": {code, message,
    details}} with a non-empty code and message — never a 500, never HTML."""
    for method, path, query, body, status in ERROR_CASES:
        response = send(app.url, method, path, query, body)
        assert response.status_code == status, (method, path, query, body, response.text)
        assert response.headers["Content-Type"].startswith("application/json"), path
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}, path
        assert error["code"] and error["message"] and isinstance(error["details"], dict)


def test_bad_requests_change_nothing(app, engine) -> None:
    """After every error case the log holds no lease and no config change."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM events")).scalar()
    for method, path, query, body, _ in ERROR_CASES:
        send(app.url, method, path, query, body)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM leases")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == before


def test_token_guards_every_mutating_endpoint(make_app) -> None:
    """With a token: POST/PUT without it 401, with a wrong one 403; reads stay open."""
    app = make_app(token=TOKEN)
    mutating = [("post", "/api/gpu/memory/allocate", {"allocation_id": "a", "memory_mb": 1}),
                ("post", "/api/gpu/memory/renew", {"allocation_id": "a", "lease_token": "t"}),
                ("post", "/api/gpu/memory/deallocate", {"allocation_id": "a", "lease_token": "t"}),
                ("post", "/api/gpu/monitoring/start", None),
                ("post", "/api/gpu/monitoring/stop", None),
                ("put", "/api/gpu/config", {"temp_throttle": 80})]
    for method, path, body in mutating:
        missing = send(app.url, method, path, {}, body)
        assert missing.status_code == 401, path
        assert missing.json()["error"]["code"] == "unauthorized"
        wrong = send(app.url, method, path, {}, body, {"Authorization": "Bearer nope"})
        assert wrong.status_code == 403, path
        assert TOKEN not in wrong.text and "nope" not in wrong.text
    assert send(app.url, "get", "/api/gpu/status/all", {}, None).status_code == 200
    ok = send(app.url, "post", "/api/gpu/memory/allocate", {},
              {"allocation_id": "a", "memory_mb": 1}, {"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 201


def test_admin_token_may_release_any_lease(make_app) -> None:
    """The API token stands in for a lost lease token (an operator cleaning up)."""
    app = make_app(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    send(app.url, "post", "/api/gpu/memory/allocate", {},
         {"allocation_id": "stuck", "memory_mb": 5}, auth)
    released = send(app.url, "post", "/api/gpu/memory/deallocate", {},
                    {"allocation_id": "stuck"}, auth)
    assert released.status_code == 200 and released.json()["status"] == "released"
