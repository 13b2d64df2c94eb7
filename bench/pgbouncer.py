"""Debian's ``pgbouncer`` on a free loopback port, in transaction pooling mode, in front of one
PostgreSQL database (what a benchmark runs a fleet through; docs/fleet.md#behind-pgbouncer).

Clients connect with ``url()``: the same user and database name as the target, and
``prepare_threshold=none`` (PgBouncer before 1.21 cannot follow psycopg's server-side
prepared statements across server connections). ``pool_size`` is the number of server
connections PostgreSQL sees for that database.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


class PgBouncer:
    """A running pgbouncer; ``stop()`` ends it (also as a context manager)."""

    def __init__(self, target_url: str, workdir: Path, pool_size: int,
                 max_client_conn: int) -> None:
        executable = binary()
        if executable is None:
            raise RuntimeError("pgbouncer is not installed (Debian package pgbouncer)")
        self.target = sa.make_url(target_url)
        self.port = free_port()
        self.pool_size = pool_size
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)  # run as nobody when started by root: it reads these files
        users = workdir / "userlist.txt"
        users.write_text(f'"{self.target.username or "postgres"}" ""\n')
        users.chmod(0o644)
        ini = workdir / "pgbouncer.ini"
        ini.write_text(f"""[databases]
{self.target.database} = host={self.target.host or '127.0.0.1'} port={self.target.port or 5432} \
dbname={self.target.database} user={self.target.username or 'postgres'} pool_size={pool_size}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
max_client_conn = {max_client_conn}
server_reset_query =
query_wait_timeout = 60
ignore_startup_parameters = extra_float_digits,options
""")
        ini.chmod(0o644)
        command = [executable, str(ini)]
        if os.geteuid() == 0:  # it refuses to run as root
            command[1:1] = ["-u", "nobody"]
        self.log = workdir / "pgbouncer.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("pgbouncer did not start listening within 10 s")

    def url(self) -> str:
        """A SQLAlchemy URL of the target database through this pgbouncer."""
        return (self.target.set(host="127.0.0.1", port=self.port, password=None)
                .update_query_dict({"prepare_threshold": "none"})
                .render_as_string(hide_password=False))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
