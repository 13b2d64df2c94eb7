"""Leases over real HTTP: the seed's memory-allocation tests, tokens, TTL, concurrency."""

from __future__ import annotations

import threading

import pytest
import requests
import sqlalchemy as sa

pytestmark = pytest.mark.postgres

TOTAL = 81559  # the traced H100's memory, MiB
CAPACITY = TOTAL - 512  # memory_reserve_mb


def post(app, path, body, **kwargs):
    return requests.post(f"{app.url}/api/gpu/memory/{path}", json=body, timeout=10, **kwargs)


def available(app, gpu_id=0):
    return requests.get(f"{app.url}/api/gpu/memory/available", params={"gpu_id": gpu_id},
                        timeout=5).json()


def test_allocation_initialization(app) -> None:
    """Before any lease: capacity is the card minus the reserve, all of it available."""
    body = available(app)
    assert body["capacity_mb"] == CAPACITY and body["available_mb"] == CAPACITY
    assert body["leased_mb"] == 0 and body["active_leases"] == 0
    assert body["device_total_mb"] == TOTAL and body["device_used_mb"] == 480
    assert body["device_free_mb"] == TOTAL - 480


def test_successful_allocation(app) -> None:
    """201 with the lease, its expiry and a token; the leased MiB stop being available."""
    response = post(app, "allocate", {"allocation_id": "llm_model", "memory_mb": 2048,
                                      "owner": "alice", "ttl_seconds": 600})
    assert response.status_code == 201, response.text
    lease = response.json()
    assert lease["status"] == "active" and lease["memory_mb"] == 2048
    assert lease["owner"] == "alice" and lease["ttl_seconds"] == 600
    assert len(lease["lease_token"]) >= 32 and lease["expires_in_seconds"] == 600
    assert available(app)["available_mb"] == CAPACITY - 2048


def test_multiple_allocations(app) -> None:
    """Several leases add up; each GPU is accounted separately."""
    for i, mb in enumerate((1000, 2000, 3000)):
        assert post(app, "allocate", {"allocation_id": f"job{i}", "memory_mb": mb}
                    ).status_code == 201
    assert post(app, "allocate", {"allocation_id": "other", "memory_mb": 5000, "gpu_id": 1}
                ).status_code == 201
    assert available(app)["leased_mb"] == 6000 and available(app)["active_leases"] == 3
    assert available(app, 1)["leased_mb"] == 5000


def test_allocation_exceeds_limit(app) -> None:
    """Over capacity: 409 over_capacity saying how many MiB are available; nothing granted."""
    post(app, "allocate", {"allocation_id": "big", "memory_mb": CAPACITY - 100})
    response = post(app, "allocate", {"allocation_id": "more", "memory_mb": 101})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "over_capacity" and error["details"]["available_mb"] == 100
    assert post(app, "allocate", {"allocation_id": "fits", "memory_mb": 100}).status_code == 201


def test_duplicate_allocation_id(app) -> None:
    """The same id while the first lease is active: 409 duplicate_allocation."""
    post(app, "allocate", {"allocation_id": "dup", "memory_mb": 10})
    response = post(app, "allocate", {"allocation_id": "dup", "memory_mb": 10})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "duplicate_allocation"


def test_deallocation(app) -> None:
    """Deallocate with the token: 200, status released, the MiB available again."""
    lease = post(app, "allocate", {"allocation_id": "x", "memory_mb": 4096}).json()
    response = post(app, "deallocate", {"allocation_id": "x",
                                        "lease_token": lease["lease_token"]})
    assert response.status_code == 200 and response.json()["status"] == "released"
    assert available(app)["available_mb"] == CAPACITY


def test_deallocation_of_nonexistent_allocation(app) -> None:
    """An id that was never granted: 404 lease_not_found."""
    response = post(app, "deallocate", {"allocation_id": "ghost", "lease_token": "t" * 43})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "lease_not_found"


def test_usage_statistics(app) -> None:
    """The lease list and the capacity agree on what is held, per owner and GPU."""
    post(app, "allocate", {"allocation_id": "a", "memory_mb": 100, "owner": "alice"})
    post(app, "allocate", {"allocation_id": "b", "memory_mb": 200, "owner": "bob"})
    post(app, "allocate", {"allocation_id": "c", "memory_mb": 300, "owner": "bob", "gpu_id": 2})
    listing = requests.get(f"{app.url}/api/gpu/memory/leases", params={"owner": "bob"},
                           timeout=5).json()
    assert listing["count"] == 2 and {x["allocation_id"] for x in listing["leases"]} == {"b", "c"}
    assert all("lease_token" not in x or x["lease_token"] is None for x in listing["leases"])
    on_gpu0 = requests.get(f"{app.url}/api/gpu/memory/leases", params={"gpu_id": 0},
                           timeout=5).json()
    assert sum(x["memory_mb"] for x in on_gpu0["leases"]) == available(app)["leased_mb"]


def test_wrong_token_is_403_and_changes_nothing(app) -> None:
    """A token of another lease cannot release or renew this one."""
    mine = post(app, "allocate", {"allocation_id": "mine", "memory_mb": 10}).json()
    theirs = post(app, "allocate", {"allocation_id": "theirs", "memory_mb": 10}).json()
    for path in ("deallocate", "renew"):
        response = post(app, path, {"allocation_id": "mine",
                                    "lease_token": theirs["lease_token"]})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "lease_token_mismatch"
        assert theirs["lease_token"] not in response.text and mine["lease_token"] not in \
            response.text
    assert available(app)["active_leases"] == 2


def test_ttl_renew_and_expiry_with_the_injected_clock(app, engine) -> None:
    """Expired leases stop counting at once; renew extends; the reaper logs lease_expired."""
    lease = post(app, "allocate", {"allocation_id": "t", "memory_mb": 1000,
                                   "ttl_seconds": 60}).json()
    app.clock.advance(50)
    renewed = post(app, "renew", {"allocation_id": "t", "lease_token": lease["lease_token"],
                                  "ttl_seconds": 30}).json()
    assert renewed["expires_in_seconds"] == 30
    app.clock.advance(31)
    assert available(app)["leased_mb"] == 0  # before any reaping
    late = post(app, "renew", {"allocation_id": "t", "lease_token": lease["lease_token"]})
    assert late.status_code == 409 and late.json()["error"]["code"] == "lease_not_active"
    app.leases.reap()
    with engine.connect() as conn:
        kinds = conn.execute(sa.text(
            "SELECT kind FROM events WHERE kind LIKE 'lease_%' ORDER BY id")).scalars().all()
    assert kinds == ["lease_granted", "lease_renewed", "lease_expired"]
    again = post(app, "allocate", {"allocation_id": "t", "memory_mb": 1000})
    assert again.status_code == 201  # the id is free again


def test_validation_errors_are_400_or_422_and_grant_nothing(app) -> None:
    """Wrong types and missing fields are 400; out-of-range values 422; nothing granted."""
    cases = [
        ({"allocation_id": "a"}, 400),
        ({"allocation_id": "a", "memory_mb": "lots"}, 400),
        ({"allocation_id": "a", "memory_mb": 1, "extra": 1}, 400),
        ({"allocation_id": "a", "memory_mb": 0}, 422),
        ({"allocation_id": "a", "memory_mb": -5}, 422),
        ({"allocation_id": "a", "memory_mb": 1, "ttl_seconds": -1}, 422),
        ({"allocation_id": "a", "memory_mb": 1, "gpu_id": 99999}, 422),
        ({"allocation_id": "a'; DROP TABLE leases;--", "memory_mb": 1}, 422),
        ({"allocation_id": "", "memory_mb": 1}, 422),
        ({"allocation_id": "a", "memory_mb": 1, "owner": "bad\x00owner"}, 422),
    ]
    for body, status in cases:
        response = post(app, "allocate", body)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()["error"]) == {"code", "message", "details"}
    assert post(app, "allocate", {"allocation_id": "a", "memory_mb": 1, "gpu_id": 9}
                ).status_code == 404
    assert available(app)["active_leases"] == 0


def test_32_threads_never_oversubscribe_over_http(app) -> None:
    """32 concurrent HTTP clients asking 10 GiB each of an 80 GiB card: exactly 7 granted."""
    results: list[int] = []
    lock = threading.Lock()

    def grab(i: int) -> None:
        code = post(app, "allocate", {"allocation_id": f"c{i}", "memory_mb": 10_240}).status_code
        with lock:
            results.append(code)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(201) == CAPACITY // 10_240 == 7
    assert results.count(409) == 25
    assert available(app)["leased_mb"] == 7 * 10_240
