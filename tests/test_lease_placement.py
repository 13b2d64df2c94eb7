"""Leases placed by the service (``gpu_id: "any"``) over real HTTP, on SQLite and PostgreSQL:
never on a hot or cooling GPU, best fit, one transaction (no oversubscription with 32
concurrent clients), every answer naming its GPU, and refusals that change nothing."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.domain.states import GPUState
from gpuhistory.leases.model import Capacity, Covers
from gpuhistory.leases.placement import best_fit, refusal
from gpuhistory.storage.queries import GpuRow, LatestSample
from tests.lease_rig import CAPACITY, CRITICAL_C, THROTTLED_C, Rig

pytestmark = pytest.mark.postgres


@pytest.fixture
def rig(engine: sa.Engine, clock: FakeClock) -> Iterator[Rig]:
    built = Rig(engine, clock)
    yield built
    built.close()


def hot_and_cooling(rig: Rig) -> None:
    """GPU 1 THROTTLED now; GPU 2 was THROTTLED and is OPTIMAL again, within its 30 s
    throttle cooldown; GPUs 0 and 3 cool."""
    rig.heat(1, THROTTLED_C)
    rig.heat(2, THROTTLED_C)
    rig.tick()
    rig.heat(2, 45)
    rig.tick()


def _capacity(index: int, available: int) -> Capacity:
    return Capacity(gpu_id=index, capacity_mb=100, leased_mb=100 - available, active_leases=0,
                    device_total_mb=None, device_used_mb=None, device_free_mb=None,
                    memory_limit_mb=None, memory_reserve_mb=0)


def test_best_fit_takes_the_least_room_that_still_fits_ties_by_lowest_index() -> None:
    """The rule itself: the smallest available capacity that holds the request wins, the
    lower index on a tie; nothing when none holds it."""
    gpus = [_capacity(0, 90), _capacity(1, 30), _capacity(2, 50), _capacity(3, 30)]
    assert best_fit(gpus, 30).gpu_id == 1  # type: ignore[union-attr]
    assert best_fit(gpus, 31).gpu_id == 2  # type: ignore[union-attr]
    assert best_fit(gpus, 60).gpu_id == 0  # type: ignore[union-attr]
    assert best_fit(gpus, 91) is None


def test_32_concurrent_clients_any_gpu_zero_oversubscription_hot_gpus_avoided(rig: Rig) -> None:
    """32 threads ask for 10000 MiB on "any" at once. Exactly the 16 that fit on the two
    cool GPUs (8 each: 81047 MiB) are granted, best fit filling GPU 0 first; GPU 1
    (THROTTLED) and GPU 2 (in its cooldown) get none; every grant names its GPU and UUID;
    the 16 others are 409 no_gpu_fits naming each GPU's reason."""
    hot_and_cooling(rig)
    barrier = threading.Barrier(32)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        barrier.wait()
        response = rig.allocate({"allocation_id": f"job-{i}", "memory_mb": 10_000,
                                 "gpu_id": "any"})
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 32
    granted = [a.json() for a in answers if a.status_code == 201]
    refused = [a.json() for a in answers if a.status_code != 201]
    assert len(granted) == 16 and {a.status_code for a in answers} == {201, 409}
    assert Counter(g["gpu_id"] for g in granted) == {0: 8, 3: 8}
    assert all(g["uuid"] == rig.uuid(g["gpu_id"]) for g in granted)
    for body in refused:
        assert body["error"]["code"] == "no_gpu_fits"
        reasons = {g["gpu_id"]: g["reason"] for g in body["error"]["details"]["gpus"]}
        assert reasons == {0: "over_capacity", 1: "throttled", 2: "cooldown",
                           3: "over_capacity"}
    for index in range(4):
        available = requests.get(f"{rig.url}/api/gpu/memory/available",
                                 params={"gpu_id": index}, timeout=10).json()
        assert 0 <= available["leased_mb"] <= available["capacity_mb"] == CAPACITY
    with rig.engine.connect() as conn:  # the log agrees: no GPU holds more than it has
        per_gpu = conn.execute(sa.text(
            "SELECT gpu_id, SUM(memory_mib) FROM leases GROUP BY gpu_id")).all()
    assert sorted(total for _, total in per_gpu) == [80_000, 80_000]


def test_a_critical_gpu_and_a_lost_one_are_never_chosen(rig: Rig) -> None:
    """CRITICAL (88 °C) and UNAVAILABLE (fallen off the bus) GPUs are refused by name even
    when they are the best fit; the lease goes to a cool GPU."""
    rig.heat(0, CRITICAL_C)
    rig.nvml.lose(1)
    rig.tick()
    assert rig.allocate({"allocation_id": "a", "memory_mb": 1000, "gpu_id": 3}
                        ).status_code == 201  # GPU 3 is now the best fit of the cool ones
    response = rig.allocate({"allocation_id": "b", "memory_mb": 1000, "gpu_id": "any"})
    assert response.status_code == 201 and response.json()["gpu_id"] == 3
    full = rig.allocate({"allocation_id": "c", "memory_mb": CAPACITY, "gpu_id": "any"})
    assert full.status_code == 201 and full.json()["gpu_id"] == 2
    refused = rig.allocate({"allocation_id": "d", "memory_mb": CAPACITY, "gpu_id": "any"})
    assert refused.status_code == 409
    gpus = {g["gpu_id"]: g for g in refused.json()["error"]["details"]["gpus"]}
    assert (gpus[0]["reason"], gpus[0]["state"]) == ("critical", "CRITICAL")
    assert (gpus[1]["reason"], gpus[1]["state"]) == ("unavailable", "UNAVAILABLE")
    assert gpus[2]["reason"] == gpus[3]["reason"] == "over_capacity"
    assert gpus[3]["available_mb"] == CAPACITY - 2000


def test_the_cooldown_ends_and_the_gpu_is_chosen_again(rig: Rig) -> None:
    """A GPU that left THROTTLED is refused for throttle_cooldown_seconds (30), then, as
    the best fit, chosen."""
    for index in (0, 1, 3):
        assert rig.allocate({"allocation_id": f"fill-{index}", "memory_mb": CAPACITY,
                             "gpu_id": index}).status_code == 201
    rig.heat(2, THROTTLED_C)
    rig.tick()
    rig.heat(2, 45)
    rig.tick()
    rig.tick(28)
    refused = rig.allocate({"allocation_id": "x", "memory_mb": 1, "gpu_id": "any"})
    assert refused.status_code == 409
    assert {g["gpu_id"]: g["reason"] for g in refused.json()["error"]["details"]["gpus"]
            }[2] == "cooldown"
    rig.tick(2)
    granted = rig.allocate({"allocation_id": "x", "memory_mb": 1, "gpu_id": "any"})
    assert granted.status_code == 201 and granted.json()["gpu_id"] == 2


def test_uuid_constrains_the_choice_to_that_card(rig: Rig) -> None:
    """gpu_id "any" with a uuid: that card, though another is the better fit; a hot card so
    named is 409 no_gpu_fits with its reason; an unknown uuid is 404 and nothing changes."""
    assert rig.allocate({"allocation_id": "a", "memory_mb": 5000, "gpu_id": 0}
                        ).status_code == 201
    response = rig.allocate({"allocation_id": "b", "memory_mb": 1000, "gpu_id": "any",
                             "uuid": rig.uuid(3)})
    assert response.status_code == 201
    assert (response.json()["gpu_id"], response.json()["uuid"]) == (3, rig.uuid(3))
    rig.heat(1, THROTTLED_C)
    rig.tick()
    before = rig.rows()
    hot = rig.allocate({"allocation_id": "c", "memory_mb": 1000, "gpu_id": "any",
                        "uuid": rig.uuid(1)})
    assert hot.status_code == 409 and hot.json()["error"]["code"] == "no_gpu_fits"
    assert [g["reason"] for g in hot.json()["error"]["details"]["gpus"]] == ["throttled"]
    unknown = rig.allocate({"allocation_id": "c", "memory_mb": 1000, "gpu_id": "any",
                            "uuid": "GPU-nonexistent"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "gpu_not_found"
    assert rig.rows() == before


def test_nothing_fits_is_409_and_changes_nothing(rig: Rig) -> None:
    """When no GPU can take the request: 409 no_gpu_fits with each GPU's available MiB;
    no lease row and no event is written."""
    before = rig.rows()
    response = rig.allocate({"allocation_id": "huge", "memory_mb": CAPACITY + 1,
                             "gpu_id": "any"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "no_gpu_fits" and error["details"]["requested_mb"] == CAPACITY + 1
    assert [(g["gpu_id"], g["reason"], g["available_mb"]) for g in error["details"]["gpus"]
            ] == [(i, "over_capacity", CAPACITY) for i in range(4)]
    assert "GPU 0: over_capacity" in error["message"]
    assert rig.rows() == before


@pytest.mark.parametrize("gpu_id", ["anyy", "ANY", "", -1, 1024, 1.5, True, "0", None])
def test_bad_gpu_ids_are_4xx_and_change_nothing(rig: Rig, gpu_id: object) -> None:
    """A gpu_id that is neither an index 0-1023 nor "any" is refused (400/422) and writes
    nothing; null is the default, GPU 0, as before."""
    before = rig.rows()
    response = rig.allocate({"allocation_id": "x", "memory_mb": 10, "gpu_id": gpu_id})
    if gpu_id is None:
        assert response.status_code == 201 and response.json()["gpu_id"] == 0
        return
    assert response.status_code in (400, 422), response.text
    assert rig.rows() == before


@pytest.mark.parametrize("covers", [{"pids": [0]}, {"pids": [4_194_305]}, {"pids": ["12"]},
                                    {"pids": 12}, {"pids": list(range(1, 258))},
                                    {"slurm_job": "47 11"}, {"slurm_job": ""},
                                    {"container": "-abc"}, {"container": "x" * 129}])
def test_bad_covers_are_4xx_and_change_nothing(rig: Rig, covers: dict[str, object]) -> None:
    """Malformed pids, Slurm job or container ids are refused and write nothing."""
    before = rig.rows()
    response = rig.allocate({"allocation_id": "x", "memory_mb": 10, "gpu_id": "any",
                             **covers})
    assert response.status_code in (400, 422), response.text
    assert rig.rows() == before


def test_a_numeric_gpu_id_works_as_before_even_on_a_hot_gpu(rig: Rig) -> None:
    """Naming the GPU is unchanged: the grant goes there, hot or not, and is 409
    over_capacity when it does not fit."""
    rig.heat(1, CRITICAL_C)
    rig.tick()
    response = rig.allocate({"allocation_id": "mine", "memory_mb": 1000, "gpu_id": 1})
    assert response.status_code == 201 and response.json()["gpu_id"] == 1
    over = rig.allocate({"allocation_id": "more", "memory_mb": CAPACITY, "gpu_id": 1})
    assert over.status_code == 409 and over.json()["error"]["code"] == "over_capacity"


def test_covers_are_stored_with_the_lease(rig: Rig) -> None:
    """pids (deduplicated, sorted), the Slurm job and the container come back with the
    lease, in the grant and in the list."""
    response = rig.allocate({"allocation_id": "job", "memory_mb": 10, "gpu_id": "any",
                             "pids": [9, 7, 9], "slurm_job": "4711_3",
                             "container": "3f2a9c1b7d4e"})
    assert response.status_code == 201, response.text
    covers = {"pids": [7, 9], "slurm_job": "4711_3", "container": "3f2a9c1b7d4e"}
    assert response.json()["covers"] == covers
    listed = requests.get(f"{rig.url}/api/gpu/memory/leases", timeout=10).json()["leases"]
    assert listed[0]["covers"] == covers


def test_cli_acquire_gpu_any_prints_the_chosen_gpu(rig: Rig) -> None:
    """`gpuhistory lease acquire --gpu any` prints id, token and the GPU chosen; a bad
    --gpu is a usage error (exit 2); nothing fits is exit 4 with the code on stderr."""
    from gpuhistory.cli.main import cli

    runner = CliRunner()
    rig.heat(0, THROTTLED_C)
    rig.tick()
    result = runner.invoke(cli, ["lease", "acquire", "--url", rig.url, "--memory-mb", "100",
                                 "--gpu", "any", "--id", "cli-1", "--pid", "77"])
    assert result.exit_code == 0, result.output
    allocation_id, token, gpu = result.output.split()
    assert (allocation_id, gpu) == ("cli-1", "1") and len(token) >= 32
    bad = runner.invoke(cli, ["lease", "acquire", "--url", rig.url, "--memory-mb", "1",
                              "--gpu", "anyy"])
    assert bad.exit_code == 2 and "not a GPU index" in bad.output
    full = runner.invoke(cli, ["lease", "acquire", "--url", rig.url, "--memory-mb",
                               str(CAPACITY + 1), "--gpu", "any"])
    assert full.exit_code == 4 and "no_gpu_fits" in full.output
    assert rig.leases.get("cli-1").covers.pids == (77,)


def test_client_lease_any_covers_its_own_pid(rig: Rig) -> None:
    """Client.lease(gpu_id="any") is placed by the server, says where, and covers the
    calling process by default."""
    import os

    from gpuhistory.client import Client

    client = Client(rig.url)
    with client.lease(2048, ttl_seconds=60, gpu_id="any", allocation_id="py") as lease:
        assert lease.gpu_id == 0 and lease.uuid == rig.uuid(0)
        assert lease.covers["pids"] == [os.getpid()]
        assert rig.leases.get("py").covers.pids == (os.getpid(),)
    with client.lease(1, gpu_id="any", allocation_id="none", pids=()) as lease:
        assert lease.covers["pids"] == []


def test_gpu_manager_places_on_any_and_stores_covers(tmp_path, clock: FakeClock) -> None:
    """GPUManager.allocate_memory(gpu_id="any") is placed by the same rule (the GPU with
    the least room that fits, here the one already holding a lease) and keeps the covers;
    a gpu_id that is neither raises ValueError and grants nothing."""
    from gpuhistory.manager import GPUManager
    from tests.conftest import FLEET4

    with GPUManager(db=tmp_path / "m.db", backend="sim", trace=FLEET4, clock=clock) as m:
        assert m.allocate_memory("first", 1000, gpu_id=2)
        assert m.allocate_memory("placed", 1000, gpu_id="any", pids=[42], slurm_job="4711")
        placed = m.leases.get("placed")
        assert placed.gpu_id == 2 and placed.covers == Covers((42,), "4711", None)
        with pytest.raises(ValueError, match='"any"'):
            m.allocate_memory("bad", 1000, gpu_id="anyy")
        assert [lease.allocation_id for lease in m.leases.list()] == ["placed", "first"]


def _entry(backend: str = "nvml", state: GPUState | None = GPUState.OPTIMAL,
           left_hot_ms: int | None = None, left_critical_ms: int | None = None) -> LatestSample:
    gpu = GpuRow(id=1, host="h", index=0, uuid="GPU-x", name=None, memory_total_mib=1000,
                 power_limit_w=None, slowdown_temp_c=None, shutdown_temp_c=None,
                 backend=backend, first_seen_ms=0, last_seen_ms=0)
    return LatestSample(gpu=gpu, ts_ms=None if state is None else 0, state=state, reading=None,
                        left_hot_ms=left_hot_ms, left_critical_ms=left_critical_ms)


def test_refusal_names_recorded_unavailable_hot_and_cooling_cards() -> None:
    """Rule 1 by itself: a card known only from an imported recording is never chosen,
    nor one without a sample, nor a hot one, nor one within 30 s of leaving THROTTLED or
    60 s of leaving CRITICAL; a cool one after its cooldown may be."""
    cfg = DEFAULT_CONFIG
    now = 100_000
    assert refusal(_entry(backend="trace"), now, cfg) == "recorded"
    assert refusal(_entry(backend="nvidia-smi"), now, cfg) == "recorded"
    assert refusal(_entry(state=None), now, cfg) == "unavailable"
    assert refusal(_entry(state=GPUState.UNAVAILABLE), now, cfg) == "unavailable"
    assert refusal(_entry(state=GPUState.THROTTLED), now, cfg) == "throttled"
    assert refusal(_entry(state=GPUState.CRITICAL), now, cfg) == "critical"
    assert refusal(_entry(left_hot_ms=now - 29_000), now, cfg) == "cooldown"
    assert refusal(_entry(left_critical_ms=now - 59_000), now, cfg) == "cooldown"
    assert refusal(_entry(state=GPUState.NORMAL, left_hot_ms=now - 30_000), now, cfg) is None
    assert refusal(_entry(), now, cfg) is None
