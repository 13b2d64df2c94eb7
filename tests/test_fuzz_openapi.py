"""Property-based fuzzing of every endpoint from our own OpenAPI document (schemathesis).

The real app over real HTTP (a sim sampler on a migrated SQLite file, an API token set);
schemathesis reads ``GET /api/openapi.json`` and generates valid and invalid requests for
every operation, sent with the token so mutating endpoints are exercised past the auth
check. Every response must not be a 5xx and must have a status, content type and body the
document declares for that operation. Bounded in CI (``MAX_EXAMPLES`` per operation and
generation mode); ``GPUHISTORY_FULL=1`` sends more and writes the counts to
docs/results/fuzz.json.

schemathesis's own pytest integration (``from_fixture``/``parametrize``) does not run under
pytest 9, so each operation is a pytest case that drives a Hypothesis test built from the
operation's strategies (``APIOperation.as_strategy``), the documented way to use
schemathesis inside other tests.

The event stream is left out: it answers ``text/event-stream`` for minutes, which a
request/response fuzzer cannot read to the end; its query is the same model as
``/api/gpu/events`` (fuzzed here) and tests/test_hostile_input.py sends it bad cursors.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gpuhistory.api.app import create_app
from gpuhistory.clock import FakeClock
from gpuhistory.context import ServiceContext
from gpuhistory.storage.engine import make_engine, upgrade
from tests.conftest import REPO, App

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-0123456789abcdef"
FULL = os.environ.get("GPUHISTORY_FULL") == "1"
MAX_EXAMPLES = 200 if FULL else 12  # per operation and generation mode
NOT_FUZZED = {("GET", "/api/gpu/events/stream")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
RESULTS = REPO / "docs" / "results" / "fuzz.json"

TRIED: dict[str, Counter[int]] = {}  # operation → status codes seen


def documented_operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation in the app's OpenAPI document."""
    app = create_app(ServiceContext(engine=None))  # type: ignore[arg-type]  # doc only
    return [(method.upper(), path) for path, ops in app.api_doc["paths"].items()
            for method in ops]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "operation" in metafunc.fixturenames:
        ops = [op for op in documented_operations() if op not in NOT_FUZZED]
        metafunc.parametrize("operation", ops, ids=[f"{m} {p}" for m, p in ops])


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    engine = make_engine(tmp_path_factory.mktemp("fuzz") / "fuzz.db")
    upgrade(engine)
    application = App(engine, FakeClock(), token=TOKEN)
    application.tick(1.0, times=30)  # history, transitions and events to answer from
    yield application
    application.close()
    engine.dispose()
    if FULL:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "max_examples_per_mode": MAX_EXAMPLES,
            "requests": sum(sum(c.values()) for c in TRIED.values()),
            "operations": {op: dict(sorted(c.items())) for op, c in sorted(TRIED.items())},
        }, indent=2) + "\n")


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: App) -> Any:
    schema = schemathesis.openapi.from_url(f"{fuzzed_app.url}/api/openapi.json", timeout=10)
    schema.config.update(base_url=fuzzed_app.url)
    return schema


def test_the_fuzzed_document_is_the_served_one(fuzzed_app: App) -> None:
    """The operations fuzzed here are exactly those the running app documents."""
    served = requests.get(f"{fuzzed_app.url}/api/openapi.json", timeout=10).json()["paths"]
    assert {(m.upper(), p) for p, ops in served.items() for m in ops} == \
        set(documented_operations())


def test_every_operation_answers_as_documented(operation: tuple[str, str], api_schema: Any,
                                               fuzzed_app: App) -> None:
    """No 5xx; every status, content type and body is one the document declares."""
    method, path = operation
    op = api_schema[path][method]
    strategies = [op.as_strategy(GenerationMode.POSITIVE)]
    if op.query or op.body or op.path_parameters:  # nothing to get wrong without inputs
        strategies.append(op.as_strategy(GenerationMode.NEGATIVE))
    seen = TRIED.setdefault(f"{method} {path}", Counter())
    session = requests.Session()

    @settings(max_examples=MAX_EXAMPLES * len(strategies), deadline=None, database=None,
              derandomize=not FULL, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            session=session, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS,
            timeout=10)
        seen[response.status_code] += 1

    try:
        fuzz()
    finally:
        session.close()
    with fuzzed_app.engine.connect() as conn:  # the database is still whole and answering
        assert conn.execute(sa.text("PRAGMA quick_check")).scalar() == "ok"
