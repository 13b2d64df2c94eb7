"""Shared fixtures: every test gets its own database, migrated by Alembic (never create_all).

SQLite by default: a fresh file per test. Test modules (or tests) marked ``postgres`` run
every test that uses the database twice, as ``[sqlite]`` and ``[postgresql]`` — one suite,
two backends. The PostgreSQL variants run on the server ``GPUHISTORY_TEST_POSTGRES`` names
(a SQLAlchemy URL of any database there, with the right to create databases): one database
per test session, migrated once and emptied (``DELETE``, sequences restarted) before each
test. Without the variable they skip, with that reason; with it set and the server
unreachable they fail — never skip.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "gpuhistory" / "data" / "traces"
H100_BURN = TRACES / "h100_burn.csv"
FLEET4 = TRACES / "fleet4_derived.csv"

POSTGRES_ENV = "GPUHISTORY_TEST_POSTGRES"
# Where `make test` looks for a server when the variable is unset: a developer with a local
# PostgreSQL (trust auth) runs both databases without setting anything.
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASES = ("sqlite", "postgresql")
# For a test in a ``postgres`` module that is about SQLite itself (its file, its pragmas).
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``postgres`` that use the database run on SQLite and on PostgreSQL."""
    if ("database" in metafunc.fixturenames
            and metafunc.definition.get_closest_marker("postgres") is not None
            and not _parametrized(metafunc, "database")):
        metafunc.parametrize("database", DATABASES, indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """Which backend this test runs on: ``sqlite`` unless parametrized (see above)."""
    return getattr(request, "param", "sqlite")


# Foreign keys in the schema, child → parent; the reset empties children first.
_FOREIGN_KEYS = """
SELECT DISTINCT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c
JOIN pg_namespace n ON n.oid = c.connamespace
WHERE c.contype = 'f' AND n.nspname = current_schema()"""
# Not the partitions of a partitioned table (DELETE FROM the table empties them; retention
# drops and creates them).
_TABLES = """SELECT quote_ident(t.tablename) FROM pg_tables t
JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.tablename))
WHERE t.schemaname = current_schema() AND t.tablename <> 'alembic_version'
AND NOT c.relispartition"""
_SEQUENCES = """SELECT quote_ident(sequencename) FROM pg_sequences
WHERE schemaname = current_schema()"""


class PostgresDatabase:
    """This session's PostgreSQL database, and the reset that empties it for each test.

    The reset is one round trip of ``DELETE FROM`` each table (children first) and
    ``ALTER SEQUENCE ... RESTART``: about 20 ms, where ``TRUNCATE`` of the same empty
    tables takes 100-250 ms and a database per test ~300 ms (create, migrate, drop).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = sa.create_engine(url, pool_size=1, max_overflow=0)
        with self._engine.connect() as conn:
            tables = conn.execute(sa.text(_TABLES)).scalars().all()
            edges = conn.execute(sa.text(_FOREIGN_KEYS)).all()
            sequences = conn.execute(sa.text(_SEQUENCES)).scalars().all()
        statements = ["SET LOCAL lock_timeout = '10s'"]  # fail, never hang, on a leaked lock
        statements += [f"DELETE FROM {t}" for t in _children_first(tables, edges)]
        statements += [f"ALTER SEQUENCE {s} RESTART" for s in sequences]
        self._reset = "; ".join(statements)

    def empty(self) -> None:
        """Every table but alembic_version emptied, identities restarted: what a freshly
        migrated database holds."""
        with self._engine.begin() as conn:
            conn.exec_driver_sql(self._reset)

    def close(self) -> None:
        self._engine.dispose()


def _children_first(tables: list[str], edges: list[tuple[str, str]]) -> list[str]:
    parents = {t: {p for c, p in edges if c == t and p != t} for t in tables}
    ordered: list[str] = []
    while len(ordered) < len(tables):
        # A table goes once nothing left to delete refers to it.
        ready = [t for t in tables if t not in ordered
                 and not any(t in parents[o] for o in tables if o not in ordered)]
        if not ready:
            raise RuntimeError(f"foreign keys form a cycle among {tables}")
        ordered.extend(ready)
    return ordered


@functools.cache
def _default_postgres() -> str | None:
    """DEFAULT_POSTGRES when a server there accepts us (asked once per process), else None."""
    try:
        import psycopg
    except ImportError:
        return None
    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres "
                        "connect_timeout=2").close()
    except psycopg.Error:
        return None
    return DEFAULT_POSTGRES


def _postgres_url() -> str:
    """The server the PostgreSQL variants run on: GPUHISTORY_TEST_POSTGRES, else a server
    answering on the default address; otherwise they skip, saying how to run them
    (``GPUHISTORY_TEST_POSTGRES=skip`` skips them on purpose)."""
    url = os.environ.get(POSTGRES_ENV)
    if url == "skip":
        pytest.skip(f"{POSTGRES_ENV}=skip")
    if url:
        return url
    default = _default_postgres()
    if default is None:
        pytest.skip(f"no PostgreSQL server accepted postgres@127.0.0.1:5432: set {POSTGRES_ENV}"
                    " to a PostgreSQL URL to run this on PostgreSQL")
    return default


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the project once, in the controlling process, before any test starts.

    Dozens of tests start ``python -m gpuhistory.cli.main`` (serve, sampler, api, import,
    lease); each would otherwise compile the package's ~130 modules from source whenever
    Python may not write its cache (PYTHONDONTWRITEBYTECODE, a read-only checkout): about
    0.3 s of CPU per process start. The compiled files go where Python looks for them
    (``__pycache__``, ignored by git) and are refreshed when a source changes.
    """
    if hasattr(config, "workerinput"):  # an xdist worker: the controller compiled already
        return
    import compileall

    for package in ("gpuhistory", "migrations", "bench", "tests"):
        if (REPO / package).is_dir():
            compileall.compile_dir(REPO / package, quiet=2)  # silent where it cannot write
    # xdist's ``--dist loadfile`` hands out files biggest-first by *number of tests*, which
    # leaves the one-test files that run for half a minute (the wheel install, the live
    # import, the three-sampler fleet) to the end, one worker busy and the other idle. Keep
    # the order of the collection instead (see pytest_collection_modifyitems).
    if getattr(config.option, "loadscopereorder", None):
        config.option.loadscopereorder = False


# The slowest files (docs/performance.md, "The test suite"), longest first: under
# ``--dist loadfile`` the workers take files in collection order, so these start first and
# the many short files fill in at the end, when any imbalance is a second, not half a minute.
SLOWEST_FIRST = (
    "test_crash.py", "test_wheel_install.py", "test_lease_history.py", "test_load.py",
    "test_dashboard_browser.py", "test_import_live.py", "test_staleness_roles.py",
    "test_fleet_hosts.py", "test_storage_files.py", "test_webhooks_process.py",
    "test_roles.py", "test_serve_leases.py", "test_cli_lease.py", "test_history.py",
    "test_examples.py", "test_postgres.py", "test_cli_status.py", "test_serve.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of SLOWEST_FIRST first, in that order; the rest as collected (a stable sort:
    every worker computes the same order, as xdist requires)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_report_header(config: pytest.Config) -> str:
    """Say up front which databases this run covers."""
    url = os.environ.get(POSTGRES_ENV)
    if url == "skip":
        return f"databases: SQLite only ({POSTGRES_ENV}=skip)"
    if url:
        return f"databases: SQLite and PostgreSQL ({POSTGRES_ENV})"
    if _default_postgres():
        return "databases: SQLite and PostgreSQL (the server on 127.0.0.1:5432)"
    return (f"databases: SQLite only: PostgreSQL variants SKIP (no server on 127.0.0.1:5432; "
            f"set {POSTGRES_ENV})")


@contextlib.contextmanager
def new_postgres_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url`` (its URL), dropped afterwards even
    with connections still open."""
    name = f"gpuhistory_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        try:
            yield sa.make_url(url).set(database=name).render_as_string(False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.dispose()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A new PostgreSQL database, not migrated, for this test alone (processes that migrate
    it themselves, migrations); dropped afterwards. Skips without GPUHISTORY_TEST_POSTGRES."""
    with new_postgres_database(_postgres_url()) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresDatabase]:
    """This session's PostgreSQL database, migrated once; dropped at the end.

    Skips when GPUHISTORY_TEST_POSTGRES is not set. When it is set, any failure to reach
    the server is an error of every PostgreSQL test (pytest caches a session fixture's
    failure), never a skip. Commits are asynchronous (``synchronous_commit = off``): a
    test never outlives a crash of the server, and it halves the cost of each commit.
    """
    with new_postgres_database(_postgres_url()) as url:
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"ALTER DATABASE {sa.make_url(url).database} "
                                     "SET synchronous_commit = off")
        finally:
            admin.dispose()
        engine = make_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        database = PostgresDatabase(url)
        try:
            yield database
        finally:
            database.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gpuhistory.db"


@pytest.fixture
def db_url(request: pytest.FixtureRequest, database: str, db_path: Path) -> str:
    """What ``--db`` takes for this test's database: the SQLite file's path, or the
    PostgreSQL URL (emptied for this test). Other processes and engines open it by this."""
    if database == "sqlite":
        return str(db_path)
    server: PostgresDatabase = request.getfixturevalue("postgres_server")
    server.empty()
    return server.url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per test process (worker); tests get copies of it.

    Migrating costs ~0.3 s a database; a copy costs under a millisecond. The file is closed
    (its WAL checkpointed away) before anything copies it, so the copy is the whole database.
    """
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    eng = make_engine(str(path))
    upgrade(eng)
    eng.dispose()
    assert not Path(f"{path}-wal").exists(), "the template must be closed before copying"
    return path


@pytest.fixture
def migrated_db(db_path: Path, sqlite_template: Path) -> Path:
    """A SQLite file at the latest migration (a copy of the template), for processes that
    open it by path: in place of starting ``gpuhistory db upgrade`` (~1 s) before them."""
    shutil.copyfile(sqlite_template, db_path)
    return db_path


@pytest.fixture
def engine(request: pytest.FixtureRequest, database: str, db_url: str) -> Iterator[sa.Engine]:
    """The test's database at the latest migration: a fresh copy of the migrated SQLite
    template, or the session's PostgreSQL database emptied (migrated once per session)."""
    if database == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def pg_engine(postgres_server: PostgresDatabase) -> Iterator[sa.Engine]:
    """The emptied, migrated PostgreSQL database, whatever the test's parametrisation (for
    tests about PostgreSQL alone). Skips when GPUHISTORY_TEST_POSTGRES is not set."""
    postgres_server.empty()
    eng = make_engine(postgres_server.url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> LogStore:
    return LogStore(engine, host="testhost")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class LiveServer:
    """The app served over real HTTP by the service's own ``HttpServer`` (as ``serve`` and
    ``api`` serve it), in a thread, on a free port of 127.0.0.1."""

    THREADS = 4

    def __init__(self, app) -> None:
        import threading

        from gpuhistory.wsgi.server import HttpServer

        self.server = HttpServer(app, "127.0.0.1", 0, self.THREADS)
        self.url = f"http://127.0.0.1:{self.server.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.stop()
        self.thread.join(5)


def serve_settings(**kwargs):
    """ServeSettings for a process built in a test: host ``testhost``, LiveServer's threads."""
    from gpuhistory.assembly import ServeSettings

    return ServeSettings(**{"host_name": "testhost", "threads": LiveServer.THREADS, **kwargs})


def build_parts(engine: sa.Engine, clock: FakeClock, role: str, static=None, **kwargs):
    """``assembly.build`` for a test: its engine and fake clock, the default configuration
    (no GPUHISTORY_* of the environment), config changes seen at once, jobs run by hand."""
    from gpuhistory.assembly import build
    from gpuhistory.config.layers import load_static

    options = {k: kwargs.pop(k) for k in ("backend", "scheduled") if k in kwargs}
    options.setdefault("scheduled", False)
    return build(serve_settings(**kwargs), role, clock=clock, engine=engine,
                 static=static or load_static(environ={}), config_refresh_ms=0, **options)


@pytest.fixture
def live_api(engine: sa.Engine, clock: FakeClock):
    """Factory: the ``api`` role's parts over real HTTP, serving a given sampler (or none)."""
    servers: list[LiveServer] = []

    def start(sampler=None, host: str = "testhost") -> LiveServer:
        parts = build_parts(engine, clock, "api", host_name=host)
        parts.context.sampler = sampler  # the test's own, driven by hand
        server = LiveServer(parts.app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class App:
    """The whole API over real HTTP on a migrated SQLite file, with a fake clock.

    Built as ``serve`` builds it (``assembly.build``, role ``both``) without the scheduler:
    the sim sampler replays the 4-GPU fleet trace and ``tick(seconds)`` advances the clock
    and samples, so tests move through the trace without sleeping. ``proc``: a /proc
    reader (a fake tree) that says who runs the simulated processes.
    """

    def __init__(self, engine: sa.Engine, clock: FakeClock, token: str | None = None,
                 static=None, stream_seconds: float = 2.0, proc=None) -> None:
        from gpuhistory.sampling.sim import SimBackend

        self.engine, self.clock = engine, clock
        self.parts = build_parts(engine, clock, "both", static=static,
                                 backend=SimBackend(clock, trace=FLEET4, proc=proc),
                                 api_token=token, stream_seconds=stream_seconds)
        self.config, self.store = self.parts.config, self.parts.store
        self.backend, self.pipeline = self.parts.backend, self.parts.pipeline
        self.sampler, self.leases = self.parts.sampler, self.parts.leases
        self.context = self.parts.context  # max_streams 2: half of LiveServer's threads
        self.sampler.tick()
        self.server = LiveServer(self.parts.app)
        self.url = self.server.url

    def tick(self, seconds: float = 1.0, times: int = 1) -> None:
        for _ in range(times):
            self.clock.advance(seconds)
            self.sampler.tick()

    def close(self) -> None:
        self.sampler.stop()
        self.server.close()


@pytest.fixture
def app(engine: sa.Engine, clock: FakeClock):
    application = App(engine, clock)
    yield application
    application.close()


@pytest.fixture
def make_app(engine: sa.Engine, clock: FakeClock):
    """Factory for an App with options (an API token, a static config)."""
    apps: list[App] = []

    def make(**kwargs) -> App:
        application = App(engine, clock, **kwargs)
        apps.append(application)
        return application

    yield make
    for application in apps:
        application.close()
