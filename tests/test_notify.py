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
