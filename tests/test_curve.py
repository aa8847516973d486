"""ZeroMQ CURVE on the overlay, live and stream sockets (issue 16, failure 5), with real sockets on
127.0.0.1. Before, anyone who could reach the stream socket could insert scans, anyone could
subscribe to the overlays, and ``publish = "tcp://*:5556"`` exposed both without a word."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import zmq
import zmq.auth

from stmwatch.daemon.cli import main
from stmwatch.daemon.config import ConfigError, config_from_dict
from stmwatch.daemon.documents import ResultDocument, utcnow
from stmwatch.daemon.live import LivePublisher
from stmwatch.daemon.publisher import OverlayPublisher
from stmwatch.drivers.stream.connection import StreamConnection
from stmwatch.drivers.stream.protocol import encode_frame
from stmwatch.drivers.stream.settings import StreamSettings
from stmwatch.drivers.stream.sim import StreamSimulator
from stmwatch.drivers.wire import SecuritySettings, secure_client
from stmwatch.models.sim.simulate import simulate_scan

from .conftest import REPO


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """``stmwatch keys generate DIR`` (server + client), and a stranger's pair made the same way."""
    d = tmp_path_factory.mktemp("keys")
    assert main(["keys", "generate", str(d)]) == 0
    assert main(["keys", "generate", str(d), "--name", "stranger"]) == 0
    return d


def security(keys) -> SecuritySettings:
    return SecuritySettings(curve=True, secret_key=str(keys / "server.key_secret"),
                            allowed_clients=[str(keys / "client.key")])


def test_keys_generate_writes_zmq_certificates_with_private_secrets(keys):
    public, secret = zmq.auth.load_certificate(str(keys / "server.key_secret"))
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(str(keys / "client.key"))[1] is None
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE(os.stat(keys / name).st_mode) == 0o600
    assert main(["keys", "generate", str(keys)]) == 2  # never overwrites a key


def sub(ctx, endpoint, server_key=None, client_key=None, topic=b""):
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if client_key:
        secure_client(sock, str(server_key), str(client_key))
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    return sock


def received(sock) -> int:
    n = 0
    while sock.poll(0):
        sock.recv_multipart()
        n += 1
    return n


def doc(i: int) -> ResultDocument:
    return ResultDocument(uid=f"u{i}", path=f"s{i}.sxm", content_hash="h", source="folder", status="ok", error=None,
                          surface="si001h", geometry=None, acquired=None, received=utcnow(), processed=utcnow(),
                          defects=[], counts={}, timing_ms={}, model_versions={}, config_version="c")


@pytest.mark.parametrize("kind", ["overlay", "live"])
def test_only_allowed_clients_receive_the_published_messages(keys, kind):
    ctx = zmq.Context()
    if kind == "overlay":
        pub = OverlayPublisher("tcp://127.0.0.1:*", security=security(keys))
        send = lambda i: pub(doc(i))  # noqa: E731
    else:
        pub = LivePublisher("tcp://127.0.0.1:*", security=security(keys))
        send = lambda i: pub({"kind": "status", "n": i})  # noqa: E731
    try:
        allowed = sub(ctx, pub.endpoint, keys / "server.key", keys / "client.key_secret")
        plain = sub(ctx, pub.endpoint)
        stranger = sub(ctx, pub.endpoint, keys / "server.key", keys / "stranger.key_secret")
        counts = [0, 0, 0]
        for i in range(40):  # 2 s: plenty for a handshake on loopback
            send(i)
            time.sleep(0.05)
            for k, s in enumerate((allowed, plain, stranger)):
                counts[k] += received(s)
        assert counts[0] > 20 and counts[1:] == [0, 0]
    finally:
        for s in (allowed, plain, stranger):
            s.close(0)
        pub.close()
        ctx.term()


def test_only_allowed_microscopes_can_send_scans_into_the_stream(keys):
    scan, _ = simulate_scan("si001h", 1, pixels=(24, 16))
    ctx = zmq.Context()
    settings = StreamSettings(endpoint="tcp://127.0.0.1:*", socket="pull", bind=True)
    with StreamConnection(settings, security=security(keys)) as conn:
        senders = {}
        for name, key in (("allowed", "client"), ("plain", None), ("stranger", "stranger")):
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            if key:
                secure_client(s, str(keys / "server.key"), str(keys / f"{key}.key_secret"))
            s.connect(conn.endpoint)
            senders[name] = s
        for name, s in senders.items():
            try:
                s.send_multipart(encode_frame(scan, name), zmq.NOBLOCK)  # a refused peer never gets a pipe
            except zmq.Again:
                pass
        # the simulated microscope with the keys (stmwatch simulate-stream --server-key --client-key)
        with StreamSimulator(conn.endpoint, socket="push", bind=False, context=ctx,
                             curve=(str(keys / "server.key"), str(keys / "client.key_secret"))) as sim:
            sim.send_frame(scan, "simulated")
        got = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            event = conn.wait_for_acquisition(0.2)
            if event is not None:
                got.append(event.path)
        for s in senders.values():
            s.close(0)
    ctx.term()
    assert sorted(got) == ["stream:allowed", "stream:simulated"]


@pytest.mark.parametrize("section, key, endpoint", [
    ("daemon", "publish", "tcp://*:5556"), ("live", "publish", "tcp://0.0.0.0:5558"),
    ("live", "publish", "tcp://192.168.1.5:5558")])
def test_binding_to_the_network_without_curve_is_refused_at_config_check(keys, section, key, endpoint):
    with pytest.raises(ConfigError, match="allow_insecure_remote"):
        config_from_dict({section: {key: endpoint}})
    config_from_dict({section: {key: endpoint}, "security": {"allow_insecure_remote": True}})
    config_from_dict({section: {key: endpoint}, "security": {
        "curve": True, "secret_key": str(keys / "server.key_secret"), "allowed_clients": [str(keys / "client.key")]}})


def test_a_stream_bound_to_the_network_needs_curve_and_publishers_refuse_too(keys):
    with pytest.raises(ConfigError, match=r"\[stream\] endpoint"):
        config_from_dict({"daemon": {"driver": "stream"}, "stream": {"endpoint": "tcp://*:5557", "bind": True}})
    with pytest.raises(ValueError, match="without CURVE"):
        OverlayPublisher("tcp://0.0.0.0:*")  # refused before binding
    with pytest.raises(ConfigError, match="needs allowed_clients"):
        config_from_dict({"security": {"curve": True, "secret_key": str(keys / "server.key_secret")}})
    with pytest.raises(ConfigError, match="no secret key"):
        config_from_dict({"security": {"curve": True, "secret_key": str(keys / "server.key"),
                                       "allowed_clients": [str(keys / "client.key")]}})


def _publish_until(pub, proc, deadline_s=60.0):
    deadline = time.monotonic() + deadline_s
    i = 0
    while proc.poll() is None and time.monotonic() < deadline:
        pub(doc(i))
        i += 1
        time.sleep(0.1)


@pytest.mark.parametrize("client", ["listen", "retarget"])
def test_listen_and_retarget_take_the_keys(keys, client):
    pub = OverlayPublisher("tcp://127.0.0.1:*", security=security(keys))
    flags = ["--server-key", str(keys / "server.key"), "--client-key", str(keys / "client.key_secret")]
    if client == "listen":
        cmd = [sys.executable, "-m", "stmwatch.daemon", "listen", "--endpoint", pub.endpoint, "--json", "--count", "1"]
    else:
        cmd = [sys.executable, str(REPO / "examples" / "retarget.py"), "--endpoint", pub.endpoint, "--count", "1"]
    try:
        proc = subprocess.Popen(cmd + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _publish_until(pub, proc)
        out, err = proc.communicate(timeout=30)
    finally:
        pub.close()
    assert proc.returncode == 0, err
    if client == "listen":
        assert json.loads(out.splitlines()[0])["file"].startswith("s")
    else:
        assert "target(s)" in out
