"""A real PostgreSQL server for the database tests, started in a temporary folder.

The server binaries come from the Debian package ``postgresql`` (``initdb``/``pg_ctl`` under
``/usr/lib/postgresql/*/bin``, installed by ``.ci/run``); the driver is ``psycopg`` (the dev
extra). The server listens on a Unix socket in its folder only (no TCP port), trusts local
connections, and is stopped at the end of the session. As root it runs as the ``postgres`` user
(``runuser``): PostgreSQL refuses to run as root. Where it cannot be started, the tests that need
it are skipped with the reason.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise PostgresUnavailable(f"{name} not found: install the Debian package postgresql (apt-get install postgresql)")
    return found


class PostgresServer:
    """``start()`` → a server on a socket in a temporary folder; ``url(name)`` a new empty database."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.user: str | None = None
        self._n = 0

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        if self.user:
            cmd = ("runuser", "-u", self.user, "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def start(self) -> "PostgresServer":
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise PostgresUnavailable(f"psycopg is not installed ({exc}): pip install -e '.[dev]'") from None
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        self.dir = Path(tempfile.mkdtemp(prefix="stmwatch-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no postgres user to run the server as") from None
            self.user = "postgres"
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = self.dir / "data"
        done = self._run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-500:]}")
        done = self._run(pg_ctl, "-D", str(data), "-w", "-t", "60", "-l", str(self.dir / "log"), "-o",
                         f"-k {self.dir} -c listen_addresses='' -c fsync=off -c timezone=America/New_York", "start")
        if done.returncode:
            raise PostgresUnavailable(f"pg_ctl start failed: {done.stderr.strip()[-500:]}")
        return self

    def url(self) -> str:
        """A new, empty database on the server, as a SQLAlchemy URL."""
        from sqlalchemy import create_engine, text

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        admin = create_engine(f"postgresql+psycopg://postgres@/postgres?host={self.dir}", isolation_level="AUTOCOMMIT")
        with admin.connect() as con:
            con.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return f"postgresql+psycopg://postgres@/{name}?host={self.dir}"

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
