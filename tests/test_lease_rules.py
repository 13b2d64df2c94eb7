"""One set of lease input rules (gpuhistory/leases/rules.py) on every surface: an allocation
id or owner accepted by one of GPUManager, the Client, HTTP and the CLI is accepted by all,
and one refused is refused by all, saying what a valid one is."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from gpuhistory.cli.lease import lease as lease_cli
from gpuhistory.client import ApiError, Client
from gpuhistory.clock import FakeClock
from gpuhistory.leases import rules
from gpuhistory.manager import GPUManager
from tests.conftest import FLEET4

ACCEPTED_IDS = ["job-1", "a", "user@host:train/run+1.2_x", "A" * 128, "0"]
REFUSED_IDS = ["my job", "", " lead", "-dash-first", "A" * 129, "tab\tid", "ünïcode", "a\n"]
ACCEPTED_OWNERS = ["carol", "Carol Smith (team ml)", "ü" * 128]
REFUSED_OWNERS = ["", "ctrl\x01char", "x" * 129]
ID_WORDS = "letters, digits and ._:@/+- starting with a letter or digit"


@pytest.fixture
def gpu_manager(tmp_path: Path, clock: FakeClock) -> Iterator[GPUManager]:
    with GPUManager(db=tmp_path / "m.db", backend="sim", trace=FLEET4, clock=clock) as m:
        yield m


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(lease_cli, list(args))
    return result.exit_code, result.output  # stdout and stderr


@pytest.mark.parametrize("allocation_id", ACCEPTED_IDS)
def test_an_id_accepted_anywhere_is_granted_renewed_and_released_everywhere(
        app, gpu_manager: GPUManager, allocation_id: str) -> None:
    """GPUManager, the Client (HTTP) and the CLI each grant, renew and release the id."""
    assert rules.allocation_id_error(allocation_id) is None
    assert gpu_manager.allocate_memory(allocation_id, 64)
    assert gpu_manager.renew_memory(allocation_id)
    assert gpu_manager.deallocate_memory(allocation_id)
    client = Client(app.url)
    token = client.allocate(allocation_id, 64)["lease_token"]
    assert client.renew(allocation_id, token)["status"] == "active"
    assert client.deallocate(allocation_id, token)["status"] == "released"
    code, out = cli("acquire", "--url", app.url, "--memory-mb", "64", "--id", allocation_id)
    assert code == 0, out
    token = out.split()[-1]
    assert cli("renew", "--url", app.url, "--token", token, "--", allocation_id)[0] == 0
    assert cli("release", "--url", app.url, "--token", token, "--", allocation_id)[0] == 0


@pytest.mark.parametrize("allocation_id", REFUSED_IDS)
def test_an_id_refused_anywhere_is_refused_everywhere_with_the_rule(
        app, gpu_manager: GPUManager, allocation_id: str) -> None:
    """GPUManager raises ValueError, HTTP answers 422 on the field, the CLI exits 2 (usage):
    each saying what an allocation id may be; nothing is granted anywhere."""
    for call in (lambda: gpu_manager.allocate_memory(allocation_id, 64),
                 lambda: gpu_manager.renew_memory(allocation_id),
                 lambda: gpu_manager.deallocate_memory(allocation_id)):
        with pytest.raises(ValueError, match=re.escape(ID_WORDS)):
            call()
    client = Client(app.url)
    for call in (lambda: client.allocate(allocation_id, 64),
                 lambda: client.renew(allocation_id, "t"),
                 lambda: client.deallocate(allocation_id, "t")):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == 422, err.value
        assert ID_WORDS in err.value.details["fields"]["allocation_id"]
    code, out = cli("acquire", "--url", app.url, "--memory-mb", "64", "--id", allocation_id)
    assert code == 2 and ID_WORDS in out, out
    for command in ("renew", "release"):
        code, out = cli(command, "--url", app.url, "--token", "t", "--", allocation_id)
        assert code == 2 and ID_WORDS in out, out
    assert client.leases(status="active") == []
    assert gpu_manager.leases.list() == []


@pytest.mark.parametrize("owner", ACCEPTED_OWNERS)
def test_an_owner_accepted_anywhere_is_accepted_everywhere(app, gpu_manager: GPUManager,
                                                           owner: str) -> None:
    assert gpu_manager.allocate_memory("job-g", 64, owner=owner)
    assert Client(app.url).allocate("job-c", 64, owner=owner)["owner"] == owner
    code, out = cli("acquire", "--url", app.url, "--memory-mb", "64", "--id", "job-l",
                    "--owner", owner, "--json")
    assert code == 0, out
    assert {x["owner"] for x in Client(app.url).leases()} == {owner}


@pytest.mark.parametrize("owner", REFUSED_OWNERS)
def test_an_owner_refused_anywhere_is_refused_everywhere(app, gpu_manager: GPUManager,
                                                         owner: str) -> None:
    with pytest.raises(ValueError, match="owner must be"):
        gpu_manager.allocate_memory("job", 64, owner=owner)
    response = requests.post(f"{app.url}/api/gpu/memory/allocate", timeout=10,
                             json={"allocation_id": "job", "memory_mb": 64, "owner": owner})
    assert response.status_code == 422
    assert "owner must be" in response.json()["error"]["details"]["fields"]["owner"]
    code, out = cli("acquire", "--url", app.url, "--memory-mb", "64", "--owner", owner)
    assert code == 2 and "owner must be" in out, out
    assert Client(app.url).leases() == [] and gpu_manager.leases.list() == []


def test_the_http_schema_takes_its_limits_from_the_rules() -> None:
    """The OpenAPI document shows the rules' own pattern and limits."""
    from gpuhistory.api.schemas import AllocateBody

    props = AllocateBody.model_json_schema()["properties"]
    assert props["allocation_id"]["pattern"] == rules.ALLOCATION_ID_PATTERN
    assert props["memory_mb"]["maximum"] == rules.MAX_MEMORY_MB
    assert props["ttl_seconds"]["anyOf"][0]["maximum"] == rules.MAX_TTL_SECONDS
