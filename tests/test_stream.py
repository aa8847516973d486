"""The ZeroMQ stream driver: protocol, assembly, junk, timeouts, reconnection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from stmwatch.drivers.base import Acquisition, PartialScan
from stmwatch.drivers.stream.protocol import (ProtocolError, encode_frame, encode_lines, encode_scan_end,
                                              encode_scan_start, parse_message)
from stmwatch.drivers.stream.acquisition import StreamAssembler
from stmwatch.drivers.stream.connection import StreamConnection
from stmwatch.drivers.stream.settings import StreamSettings
from stmwatch.drivers.stream.sim import StreamSimulator, acquisition_rows, junk_messages
from stmwatch.models.sim.simulate import simulate_scan


def sim_scan(seed=0, direction="down", pixels=(24, 16)):
    scan, truth = simulate_scan("si001h", seed, pixels=pixels, direction=direction, offset_m=(2e-9, 1e-9),
                                angle_deg=30.0)
    return scan


def feed(asm, frames, now=0.0):
    return asm.feed(parse_message(frames), now)


def assert_same_frames(a, b):
    assert [c.name for c in a.channels] == [c.name for c in b.channels]
    for ca, cb in zip(a.channels, b.channels):
        for fa, fb in zip(ca.frames(), cb.frames()):
            np.testing.assert_array_equal(fa, fb)


@pytest.mark.parametrize("direction, block", [("down", 1), ("up", 1), ("up", 3), ("down", 5)])
def test_lines_assemble_into_the_scan_that_was_sent(direction, block):
    scan = sim_scan(direction=direction)
    asm = StreamAssembler(timeout_s=10)
    assert feed(asm, encode_scan_start(scan, "s1")) == []
    rows = acquisition_rows(scan)
    assert rows[0] == (0 if direction == "down" else scan.shape[0] - 1)
    partials = []
    for i in range(0, len(rows), block):
        chunk = rows[i:i + block]
        events = feed(asm, encode_lines(scan, "s1", min(chunk), len(chunk)))
        assert len(events) == 1 and isinstance(events[0], PartialScan)
        partials.append(events[0].rows_done)
    assert partials[-1] == scan.shape[0]
    [acq] = feed(asm, encode_scan_end("s1"))
    assert isinstance(acq, Acquisition) and acq.complete and acq.path == "stream:s1"
    got = acq.read()
    assert_same_frames(got, scan)
    assert got.geometry() == scan.geometry() and not got.partial


def test_bad_messages_are_protocol_errors_and_the_scan_goes_on():
    scan = sim_scan()
    asm = StreamAssembler(timeout_s=10)
    feed(asm, encode_scan_start(scan, "s1"))
    feed(asm, encode_lines(scan, "s1", 0))
    feed(asm, encode_lines(scan, "s1", 1))
    for frames in junk_messages(b"stm", "s1", scan.pixels[0]):
        with pytest.raises(ProtocolError):
            feed(asm, frames)
    with pytest.raises(ProtocolError, match="out of order"):
        feed(asm, encode_lines(scan, "s1", 0))  # behind row 1
    with pytest.raises(ProtocolError, match="outside"):
        feed(asm, [b"stm", json.dumps({"version": 1, "kind": "lines", "scan_id": "s1", "row": 99}).encode(),
                   b"\0" * 4 * 24 * 4])
    for r in range(2, scan.shape[0]):
        if r != 7:  # one line lost on the way
            feed(asm, encode_lines(scan, "s1", r))
    [acq] = feed(asm, encode_scan_end("s1"))
    got = acq.read()
    assert not acq.complete and got.partial and got.nan_rows == 1
    assert np.isnan(got.channels[0].forward[7]).all()
    np.testing.assert_array_equal(got.channels[0].forward[8:], scan.channels[0].forward[8:])


def test_silence_times_out_an_open_scan_into_a_partial_scan():
    scan = sim_scan()
    asm = StreamAssembler(timeout_s=5)
    feed(asm, encode_scan_start(scan, "s1"), now=0.0)
    for r in range(6):
        feed(asm, encode_lines(scan, "s1", r), now=1.0 + r)
    assert asm.expire(10.9) == []
    [acq] = asm.expire(11.0)
    assert not acq.complete and acq.read().nan_rows == scan.shape[0] - 6
    assert asm.current is None


def test_a_new_scan_start_closes_the_open_one_and_frames_are_whole_scans():
    a, b = sim_scan(1), sim_scan(2, pixels=(16, 16))
    asm = StreamAssembler(timeout_s=5)
    feed(asm, encode_scan_start(a, "a"))
    feed(asm, encode_lines(a, "a", 0))
    [closed, whole] = feed(asm, encode_frame(b, "b"))
    assert closed.path == "stream:a" and not closed.complete
    assert whole.path == "stream:b" and whole.complete
    assert_same_frames(whole.read(), b)
    bad = encode_frame(b, "c")
    with pytest.raises(ProtocolError, match="frame"):
        feed(asm, [bad[0], bad[1], bad[2][:-8]])
    # the same scan sent twice has the same content hash (idempotent ingest)
    [again] = feed(asm, encode_frame(b, "b2"))
    assert again.content_hash == whole.content_hash


def test_a_scan_start_with_bad_geometry_is_rejected():
    asm = StreamAssembler(timeout_s=5)
    header = json.loads(encode_scan_start(sim_scan(), "x")[1])
    for key, value in [("pixels", [0, 10]), ("pixels", "big"), ("range_m", [1e-9]), ("channels", []),
                       ("direction", "sideways"), ("range_m", [0.0, 1e-9]), ("range_m", [-1e-8, 1e-8])]:
        with pytest.raises(ProtocolError):
            feed(asm, [b"stm", json.dumps({**header, key: value}).encode(), b""])
    assert asm.current is None


def _events(conn, n, timeout=10.0, partial=False):
    got = []
    while len(got) < n:
        event = conn.wait_for_acquisition(timeout)
        if event is None:
            break
        if isinstance(event, PartialScan) and not partial:
            continue
        got.append(event)
    return got


def test_sub_connection_with_junk_and_a_publisher_restart():
    ctx = zmq.Context()
    scans = [sim_scan(i) for i in range(3)]
    try:
        with StreamSimulator(context=ctx) as sim:
            endpoint = sim.endpoint
            settings = StreamSettings(endpoint=endpoint, timeout_s=30)
            with StreamConnection(settings, context=ctx) as conn:
                assert sim.wait_for_subscriber(10)
                sim.send_scan(scans[0], "s0", junk_every=4)
                sim.send_scan(scans[1], "s1", stop_after=5)  # the microscope PC dies mid-scan
                first = _events(conn, 1)
                assert conn.dropped == scans[0].shape[0] // 4  # one junk message every 4 lines
                sim.__exit__()
                with StreamSimulator(endpoint=endpoint, context=ctx) as sim2:  # restarted on the same port
                    # the SUB reconnects by itself (its subscription is re-sent while it is polled)
                    waited = []
                    for _ in range(100):
                        if sim2.wait_for_subscriber(0.05):
                            break
                        waited += _events(conn, 1, timeout=0.05)
                    else:
                        pytest.fail("the SUB did not reconnect to the restarted publisher")
                    assert waited == []  # nothing finished while the publisher was away
                    sim2.send_scan(scans[2], "s2")
                    rest = _events(conn, 2)
    finally:
        ctx.term()
    assert [a.path for a in first + rest] == ["stream:s0", "stream:s1", "stream:s2"]
    assert [a.complete for a in first + rest] == [True, False, True]
    assert_same_frames(first[0].read(), scans[0])
    assert_same_frames(rest[1].read(), scans[2])
    assert rest[0].read().nan_rows == scans[1].shape[0] - 5


def test_pull_connection_binds_and_yields_partial_events():
    settings = StreamSettings(endpoint="tcp://127.0.0.1:*", socket="pull", bind=True, timeout_s=30)
    scan = sim_scan(3)
    with StreamConnection(settings) as conn:
        with StreamSimulator(endpoint=conn.endpoint, socket="push", bind=False) as sim:
            sim.send_scan(scan, "p", lines_per_message=4)
            events = _events(conn, scan.shape[0] // 4 + 1, partial=True)
    assert [e.rows_done for e in events[:-1]] == [4, 8, 12, 16]
    assert events[-1].complete
    assert_same_frames(events[-1].read(), scan)


def test_joining_mid_scan_drops_its_lines_with_one_warning(caplog):
    scan = sim_scan()
    conn = StreamConnection(StreamSettings())
    with caplog.at_level("WARNING", logger="stmwatch.drivers.stream.connection"):
        for r in range(5):
            conn._handle(encode_lines(scan, "joined-late", r), 0.0)
        conn._handle(encode_scan_end("joined-late"), 0.0)
    assert conn.dropped == 6 and list(conn._events) == []
    assert len(caplog.records) == 1 and "joined-late" in caplog.records[0].getMessage()
