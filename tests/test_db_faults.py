"""A database that cannot be written, and two daemons on one database (issue 16, failures 3 and 6).

Before: a read-only database opened fine, the daemon said "ready", analysed and published every
scan and stored none of them (a traceback per scan). A full disk at run time did the same. Two
daemons on one database analysed every scan twice.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest
from sqlalchemy import event

from stmwatch.daemon.config import Config, DaemonSettings
from stmwatch.daemon.daemon import Daemon
from stmwatch.daemon.db import Database, DatabaseError, lease_owner
from stmwatch.daemon.service import status_line
from stmwatch.drivers.folder.settings import FolderSettings
from stmwatch.drivers.sxm import write_sxm
from stmwatch.models.sim.simulate import simulate_scan
from stmwatch.models.standin import standin_analyser


def config_for(tmp_path, url=None) -> Config:
    watch = tmp_path / "scans"
    watch.mkdir(exist_ok=True)
    return Config(daemon=DaemonSettings(database=url or f"sqlite:///{tmp_path / 'x.db'}", publish="",
                                        analyser="standin", lease_s=30.0),
                  folder=FolderSettings(path=str(watch), stable_s=0.5, poll_interval_s=0.2))


def write_scans(folder, n, first=0):
    for i in range(first, first + n):
        scan, _ = simulate_scan("si001h", i, pixels=(48, 48), n_defects=2)
        write_sxm(scan, folder / f"scan_{i:03d}.sxm")


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def read_only(url: str, tmp_path) -> str:
    """The same database opened read-only: SQLite's mode=ro, PostgreSQL's read-only transactions."""
    if url.startswith("sqlite"):
        return f"sqlite:///file:{url[len('sqlite:///'):]}?mode=ro&uri=true"
    return url + "&options=-c%20default_transaction_read_only%3Don"


def test_a_read_only_database_stops_the_start_with_the_reason(tmp_path, database_url):
    Database(database_url).close()  # exists, schema current
    config = config_for(tmp_path, read_only(database_url, tmp_path))
    daemon = Daemon(config, analyser=standin_analyser())
    with pytest.raises(DatabaseError, match="cannot be written.*read.?only"):
        daemon.start()
    assert daemon.pipeline is None and not daemon.running


class DiskFull:
    """Makes every INSERT into ``scans`` fail as SQLite does on a full disk, while ``on``."""

    def __init__(self, engine):
        self.on = False
        event.listen(engine, "before_cursor_execute", self)

    def __call__(self, conn, cursor, statement, *args):
        if self.on and statement.lstrip().upper().startswith("INSERT INTO SCANS"):
            raise sqlite3.OperationalError("database or disk is full")


def test_a_full_disk_keeps_scans_pending_and_stores_each_once_when_it_is_back(tmp_path, caplog, database_url):
    config = config_for(tmp_path, database_url)
    daemon = Daemon(config, analyser=standin_analyser())
    daemon.start()
    try:
        daemon.pipeline.retry_s = (0.05, 0.2)
        full = DiskFull(daemon.db.engine)
        full.on = True
        with caplog.at_level("ERROR", logger="stmwatch.daemon.pipeline"):
            write_scans(tmp_path / "scans", 4)
            wait_until(lambda: daemon.pipeline.stats.store_retries >= 5)
            assert daemon.db.summary()["ok"] == 0
            stats = daemon.pipeline.stats
            assert stats.ok + stats.partial + stats.failed == 0  # nothing marked done
            assert "database unavailable" in status_line(daemon) and "disk is full" in status_line(daemon)
        errors = [r for r in caplog.records if "database unavailable" in r.getMessage()]
        assert len(errors) == 1 and not any(r.exc_info for r in caplog.records)  # logged once, no traceback
        full.on = False
        assert daemon.wait_until_idle(60)
        assert daemon.pipeline.store_error is None
        assert "database unavailable" not in status_line(daemon)
        rows = daemon.db.scans()
        assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == [f"scan_{i:03d}.sxm" for i in range(4)]
    finally:
        daemon.stop()


def test_a_second_daemon_on_the_same_database_refuses_naming_the_first(tmp_path, database_url):
    first = Daemon(config_for(tmp_path, database_url), analyser=standin_analyser())
    first.start()
    second = Daemon(config_for(tmp_path, database_url), analyser=standin_analyser())
    try:
        with pytest.raises(DatabaseError, match="in use by another stmwatch daemon"):
            second.start()
        assert second.pipeline is None
    finally:
        first.stop()
    second.start()  # the first gave its lease back on stop
    second.stop()


def test_a_lease_of_a_killed_daemon_is_taken_over(tmp_path, database_url):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    db = Database(database_url)
    host = lease_owner().split(":")[0]
    db.take_lease(f"{host}:{pid}:dead", ttl_s=600)
    db.take_lease(lease_owner(), ttl_s=600)  # the holder's process is gone: taken over
    with pytest.raises(DatabaseError, match="in use"):
        db.take_lease(lease_owner(), ttl_s=60)  # this process is alive
    db.close()


def test_the_dashboard_shows_a_daemon_that_cannot_store():
    import time as _time

    from rich.console import Console

    from stmwatch.daemon.dashboard import LiveState, Snapshot, render

    live = LiveState(status={"driver": "folder", "queued": 3, "store_error": "OperationalError: database or disk is full"},
                     status_at=_time.monotonic())
    console = Console(width=200, record=True, color_system=None)
    console.print(render(Snapshot(), live))
    text = console.export_text()
    assert "cannot store (3 scan(s) pending, retrying)" in text and "disk is full" in text


def test_daemons_of_two_microscopes_share_one_database(tmp_path, database_url):
    """docs/deploy.md section 4: every microscope's daemon writes into one database. The lease
    is on the scan source: a second daemon on the same folder still refuses, one on another starts."""
    lt, rt = tmp_path / "lt", tmp_path / "rt"
    lt.mkdir()
    rt.mkdir()
    first = Daemon(config_for(lt, database_url), analyser=standin_analyser())
    first.start()
    second = Daemon(config_for(rt, database_url), analyser=standin_analyser())
    same = Daemon(config_for(lt, database_url), analyser=standin_analyser())
    try:
        second.start()  # before: "database ... is in use by another stmwatch daemon"
        write_scans(lt / "scans", 1)
        write_scans(rt / "scans", 1, first=1)
        assert first.wait_until_idle(60) and second.wait_until_idle(60)
        with pytest.raises(DatabaseError, match=f"in use by another stmwatch daemon.*{lt / 'scans'}"):
            same.start()
    finally:
        second.stop()
        first.stop()
    with Database(database_url) as db:
        assert sorted(r["path"].rsplit("/", 1)[1] for r in db.scans()) == ["scan_000.sxm", "scan_001.sxm"]


def test_lease_and_write_errors_do_not_show_the_database_password(tmp_path, postgres_server):
    """`stmwatch run` prints these errors (and systemd keeps them in the journal): URL masked."""
    secret = "s3cr3t-pw"
    url = postgres_server.url()
    Database(url).close()
    with_password = url.replace("postgres@", f"postgres:{secret}@")  # the server trusts: any password
    holder = Database(with_password)
    holder.take_lease(lease_owner(), ttl_s=60)
    try:
        with Database(read_only(with_password, tmp_path)) as db, pytest.raises(DatabaseError) as refused:
            db.check_writable()
        assert "cannot be written" in str(refused.value)
        with Database(with_password) as db, pytest.raises(DatabaseError) as refused_lease:
            db.take_lease(lease_owner(), ttl_s=60)
        assert "in use by another stmwatch daemon" in str(refused_lease.value)
        for error in (refused, refused_lease):
            assert secret not in str(error.value) and "postgres:***@" in str(error.value)
    finally:
        holder.close()
