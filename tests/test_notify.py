"""sd_notify: the datagrams a bound socket receives are the ones systemd expects."""
from __future__ import annotations

import os
import socket
import uuid

import pytest

from stmwatch.daemon.notify import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def recv(sock) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_states_arrive_as_key_value_datagrams(listener):
    path, sock = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("watching /data\n3 scans")
    assert recv(sock) == ["READY=1", "STATUS=watching /data 3 scans"]
    assert n.status("queue 2")
    assert recv(sock) == ["STATUS=queue 2"]
    assert n.watchdog()
    assert recv(sock) == ["WATCHDOG=1"]
    assert n.reloading()
    lines = recv(sock)
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    assert n.stopping()
    assert recv(sock) == ["STOPPING=1"]
    n.close()


def test_abstract_socket_names():
    name = f"stmwatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        assert Notifier(environ={"NOTIFY_SOCKET": "@" + name}).ready()
        assert recv(sock) == ["READY=1"]
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent():
    n = Notifier(environ={})
    assert not n.enabled and not n.ready() and not n.watchdog()
    assert n.watchdog_period_s == 0 and not n.watchdog_due()


def test_watchdog_period_is_half_of_watchdog_usec_for_this_process(listener):
    path, sock = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(environ=env)
    assert n.watchdog_period_s == 10.0
    assert n.watchdog_due(now=1000.0)  # first ping at once
    assert recv(sock) == ["WATCHDOG=1"]
    assert not n.watchdog_due(now=n._last_ping + 9.9)
    assert n.watchdog_due(now=n._last_ping + 10.0)
    assert Notifier(environ={**env, "WATCHDOG_PID": "1"}).watchdog_period_s == 0  # another process's watchdog
    assert Notifier(environ=env, watchdog_s=2.5).watchdog_period_s == 2.5


# ---- the daemon under a fake systemd ----------------------------------------------------------
def test_daemon_subprocess_ready_watchdog_stopping_and_drained_queue(tmp_path):
    import signal
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    from stmwatch.drivers.sxm import write_sxm
    from stmwatch.models.sim.simulate import simulate_scan

    scans = tmp_path / "scans"
    scans.mkdir()
    n_files = 12
    # enough, and big enough, that the analysis takes a while: scans are still queued when SIGTERM
    # comes (4 scans of 512² were all done by then once preprocessing became fast)
    scan, _ = simulate_scan("si001h", 0, pixels=(768, 768), n_defects=5)
    for i in range(n_files):
        scan.channels[0].forward[0, 0] += 1e-12  # another content hash: not a duplicate
        write_sxm(scan, scans / f"scan{i:02d}.sxm")
    db = tmp_path / "stmwatch.db"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[daemon]
driver = "folder"
database = "sqlite:///{db}"
publish = ""
analyser = "standin"
queue_size = 16
[live]
publish = ""
[folder]
path = "{scans}"
stable_s = 0.1
poll_interval_s = 0.1
""")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    sock.bind(notify_path)
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "stmwatch.daemon", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    messages: list[list[str]] = []

    def until(predicate) -> list[str]:
        while True:
            try:
                lines = recv(sock)
            except socket.timeout:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"no such message; got {messages}\nstderr: {err[-3000:]}")
            messages.append(lines)
            if predicate(lines):
                return lines

    try:
        until(lambda m: "READY=1" in m)
        until(lambda m: m == ["WATCHDOG=1"])
        until(lambda m: m == ["WATCHDOG=1"])
        # every file taken (queued or done) before we stop it
        until(lambda m: any(l.startswith("STATUS=") and _taken(l) == n_files for l in m))
        proc.send_signal(signal.SIGTERM)
        stopping = until(lambda m: "STOPPING=1" in m)
        draining = [int(l.split()[2]) for l in stopping if l.startswith("STATUS=stopping: draining")]
        assert draining and draining[0] > 0  # some scans were still queued: the test tests draining
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, err[-3000:]
    with create_engine(f"sqlite:///{db}").connect() as conn:
        rows = conn.execute(text("select path, status from scans")).all()
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in rows) == [f"scan{i:02d}.sxm" for i in range(n_files)]
    assert all(status == "ok" for _, status in rows)


def _taken(status: str) -> int:
    """done + queued from a STATUS line of ``service.status_line``."""
    import re

    m = re.match(r"STATUS=(\d+) scans done .*?, (\d+) queued", status)
    return int(m.group(1)) + int(m.group(2)) if m else -1


def test_daemon_subprocess_reloads_on_sighup(tmp_path):
    import signal
    import subprocess
    import sys

    scans = tmp_path / "scans"
    scans.mkdir()
    config = tmp_path / "config.toml"
    body = f"""
[daemon]
driver = "folder"
database = "sqlite:///{tmp_path / 'stmwatch.db'}"
publish = ""
analyser = "standin"
log_level = "{{level}}"
[live]
publish = ""
[folder]
path = "{scans}"
"""
    config.write_text(body.format(level="INFO"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen([sys.executable, "-m", "stmwatch.daemon", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert recv(sock)[0] == "READY=1"
        config.write_text(body.format(level="WARNING"))
        proc.send_signal(signal.SIGHUP)
        reloading = recv(sock)
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert recv(sock)[0] == "READY=1"
        proc.send_signal(signal.SIGTERM)
        assert recv(sock)[0] == "STOPPING=1"
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, err[-3000:]
    assert "config reloaded" in err
    after = err.split("config reloaded", 1)[1]
    assert " INFO " not in after and "INFO:" not in after, after[-2000:]  # the new log_level holds from the reload on
