"""Stream memory bombs and unusable endpoints (issue 16, failures 2 and 6).

A message of a few hundred bytes used to make the driver allocate whatever its header declared
(4096² pixels x 16 channels: 2 GiB) before any size check. Every declared size is now checked
against ``[stream]`` caps before anything is allocated; what is over is dropped with one warning
and counted.
"""
from __future__ import annotations

import json
import tracemalloc

import pytest

from stmwatch.daemon.config import ConfigError, config_from_dict
from stmwatch.drivers.stream.connection import StreamConnection
from stmwatch.drivers.stream.protocol import encode_frame, encode_scan_start
from stmwatch.drivers.stream.settings import StreamSettings
from stmwatch.models.sim.simulate import simulate_scan


def small_scan(seed=0):
    scan, _ = simulate_scan("si001h", seed, pixels=(24, 16))
    return scan


def bomb(kind: str, pixels: int, channels: int) -> list[bytes]:
    header = json.loads(encode_scan_start(small_scan(), "bomb")[1])
    header.update(kind=kind, pixels=[pixels, pixels],
                  channels=[{"name": f"c{i}", "unit": "m", "directions": ["forward", "backward"]}
                            for i in range(channels)])
    return [b"stm", json.dumps(header).encode(), b""]


@pytest.mark.parametrize("kind", ["scan_start", "frame"])
def test_a_small_message_declaring_a_huge_scan_is_dropped_before_allocating(kind, caplog):
    message = bomb(kind, 2048, 16)  # 2048² x 32 frames x 4 bytes = 512 MiB declared
    assert sum(map(len, message)) < 2048
    conn = StreamConnection(StreamSettings())
    tracemalloc.start()
    try:
        with caplog.at_level("WARNING", logger="stmwatch.drivers.stream.connection"):
            for _ in range(3):
                conn._handle(message, 0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"three {kind} bombs allocated {peak} bytes"
    assert conn.drops["oversize"] == 3 and conn.dropped == 3
    assert len(caplog.records) == 3 and all("max_message_bytes" in r.getMessage() for r in caplog.records)
    assert conn.assembler.current is None and not conn._events


def test_too_many_channels_are_dropped():
    conn = StreamConnection(StreamSettings(max_channels=4))
    conn._handle(bomb("scan_start", 8, 5), 0.0)
    assert conn.drops["oversize"] == 1 and conn.assembler.current is None
    conn._handle(bomb("scan_start", 8, 4), 0.0)
    assert conn.assembler.current is not None and conn.dropped == 1


def test_a_message_over_max_message_bytes_is_dropped_and_one_within_kept():
    scan = small_scan()
    frame = encode_frame(scan, "big")  # 24 x 16 x frames x 4 bytes
    size = sum(map(len, frame))
    conn = StreamConnection(StreamSettings(max_message_bytes=size - 1))
    conn._handle(frame, 0.0)
    assert conn.drops["oversize"] == 1 and not conn._events
    conn = StreamConnection(StreamSettings(max_message_bytes=size))
    conn._handle(frame, 0.0)
    assert conn.dropped == 0 and len(conn._events) == 1


def test_at_most_max_open_scans_are_held():
    conn = StreamConnection(StreamSettings(max_open_scans=2))
    for i in range(4):
        conn._handle(encode_frame(small_scan(i), f"s{i}"), 0.0)
    assert conn.held == 2 and conn.drops["too_many_scans"] == 2
    conn._events.popleft()  # the pipeline took one: room for the next
    conn._handle(encode_frame(small_scan(9), "s9"), 0.0)
    assert [e.path for e in conn._events] == ["stream:s1", "stream:s9"]


@pytest.mark.parametrize("key, value, words", [
    ("max_message_bytes", 10, "max_message_bytes"), ("max_open_scans", 0, "max_open_scans"),
    ("max_channels", 0, "max_channels"), ("endpoint", "tcp://127.0.0.1:99999", "99999"),
    ("endpoint", "127.0.0.1:5557", "ZeroMQ endpoint"), ("endpoint", "tcp://*:5557", "'*'")])
def test_bad_stream_settings_stop_at_config_check(key, value, words):
    with pytest.raises(ConfigError, match=r"\[stream\]") as info:
        config_from_dict({"stream": {key: value}})
    assert words in str(info.value)


def test_a_stream_host_that_does_not_resolve_stops_the_start():
    conn = StreamConnection(StreamSettings(endpoint="tcp://no-such-host.invalid:5557"))
    with pytest.raises(ValueError, match="does not resolve"):
        conn.__enter__()
    conn.__exit__(None, None, None)
