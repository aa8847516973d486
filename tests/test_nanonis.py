"""The Nanonis TCP driver against byte layouts from the vendor document and against the fake server.

Independent truth: the hex of the worked examples in TCPProtocol_SPM.pdf (FolMe.XYPosGet), the
argument layouts of Scan.FrameDataGrab/BufferGet/FrameGet packed here by hand with ``struct``,
and the scans the fake server was given (in the display frame).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import math
import socket
import struct
import threading
import time

import numpy as np
import pytest

from stmwatch.drivers.nanonis.client import NanonisClient, NanonisTimeout, split_channel_name
from stmwatch.drivers.nanonis.protocol import Body, NanonisError, ProtocolError, request_header
from stmwatch.drivers.nanonis.settings import NanonisSettings
from stmwatch.drivers.nanonis.sim import FakeNanonisServer
from stmwatch.drivers.scan import Channel, Scan


# ---- bytes from the vendor document ---------------------------------------------------------
def test_request_header_matches_the_manuals_example():
    # TCPProtocol_SPM.pdf, "Get the tip position": FolMe.XYPosGet, body 4 bytes, send response back
    expected = bytes.fromhex(
        "466F 6C4D 652E 5859 506F 7347 6574 0000 0000 0000 0000 0000 0000 0000 0000 0000"
        "0000 0004" "0001" "0000".replace(" ", ""))
    assert request_header("FolMe.XYPosGet", 4) == expected
    assert len(expected) == 40


def test_response_body_of_the_manuals_example_reads_back():
    # X = 5 nm, Y = -5 nm (float64), error status 0, error size 0
    body = bytes.fromhex("3E35798EE2308C3A" "BE35798EE2308C3A" "00000000" "00000000")
    b = Body(body, "FolMe.XYPosGet")
    assert b.float64() == pytest.approx(5e-9) and b.float64() == pytest.approx(-5e-9)
    assert b.error() == (False, "") and b.remaining == 0


def test_channel_names_split_into_name_and_unit():
    assert split_channel_name("Z (m)") == ("Z", "m")
    assert split_channel_name("Current (A)") == ("Current", "A")
    assert split_channel_name("Phase") == ("Phase", "")


class OneShotServer:
    """A TCP server that records one request and answers with the bytes the test gives it."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.received = b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            head = b""
            while len(head) < 40:
                head += conn.recv(40 - len(head))
            (size,) = struct.unpack(">i", head[32:36])
            body = b""
            while len(body) < size:
                body += conn.recv(size - len(body))
            self.received = head + body
            conn.sendall(self.reply)
            try:
                conn.recv(1)  # keep the connection open until the client closes it
            except OSError:
                pass

    def close(self):
        self.sock.close()
        self.thread.join(timeout=5)


def _name32(name: str) -> bytes:
    return name.encode() + b"\0" * (32 - len(name))


def test_frame_data_grab_request_and_response_bytes():
    data = np.arange(12, dtype=np.float32).reshape(3, 4) * 1e-10
    name = b"Z (m)"
    body = (struct.pack(">i", len(name)) + name + struct.pack(">ii", 3, 4) + data.astype(">f4").tobytes()
            + struct.pack(">I", 1) + struct.pack(">Ii", 0, 0))
    server = OneShotServer(_name32("Scan.FrameDataGrab") + struct.pack(">i", len(body)) + b"\0" * 4 + body)
    try:
        with NanonisClient("127.0.0.1", server.port, timeout=5) as conn:
            got_name, got, direction = conn.frame_data_grab(14, forward=False)
    finally:
        server.close()
    # request: header (body 8 bytes, respond) + channel index uint32 14 + direction uint32 0 (backward)
    assert server.received == (_name32("Scan.FrameDataGrab") + struct.pack(">iHH", 8, 1, 0)
                               + struct.pack(">II", 14, 0))
    assert got_name == "Z (m)" and direction == "up"
    np.testing.assert_array_equal(got, data)


def test_buffer_get_and_frame_get_layouts():
    body = struct.pack(">i3i", 3, 14, 0, 7) + struct.pack(">ii", 256, 128) + struct.pack(">Ii", 0, 0)
    server = OneShotServer(_name32("Scan.BufferGet") + struct.pack(">i", len(body)) + b"\0" * 4 + body)
    try:
        with NanonisClient("127.0.0.1", server.port, timeout=5) as conn:
            assert conn.buffer_get() == ([14, 0, 7], 256, 128)
    finally:
        server.close()
    body = struct.pack(">5f", 1e-8, -2e-8, 3e-8, 4e-8, 15.0) + struct.pack(">Ii", 0, 0)
    server = OneShotServer(_name32("Scan.FrameGet") + struct.pack(">i", len(body)) + b"\0" * 4 + body)
    try:
        with NanonisClient("127.0.0.1", server.port, timeout=5) as conn:
            got = conn.frame_get()
    finally:
        server.close()
    assert server.received == _name32("Scan.FrameGet") + struct.pack(">iHH", 0, 1, 0)
    assert got == pytest.approx((1e-8, -2e-8, 3e-8, 4e-8, 15.0), rel=1e-6)


def test_error_block_becomes_a_clear_error():
    msg = b"Channel index 99 is not in the scan buffer"
    body = struct.pack(">i", 0) + struct.pack(">ii", 0, 0) + struct.pack(">I", 0) + struct.pack(">Ii", 1, len(msg)) + msg
    server = OneShotServer(_name32("Scan.FrameDataGrab") + struct.pack(">i", len(body)) + b"\0" * 4 + body)
    try:
        with NanonisClient("127.0.0.1", server.port, timeout=5) as conn:
            with pytest.raises(NanonisError, match="Channel index 99"):
                conn.frame_data_grab(99)
    finally:
        server.close()


# ---- against the fake server ------------------------------------------------------------------
def make_scan(seed: int, nx: int, ny: int, direction: str, angle: float, offset, size, bias) -> Scan:
    rng = np.random.default_rng(seed)
    z = Channel("Z", "m", forward=rng.normal(size=(ny, nx)).astype(np.float32) * 1e-10,
                backward=rng.normal(size=(ny, nx)).astype(np.float32) * 1e-10, index=14)
    i = Channel("Current", "A", forward=rng.normal(size=(ny, nx)).astype(np.float32) * 1e-12,
                backward=rng.normal(size=(ny, nx)).astype(np.float32) * 1e-12, index=0)
    # a marker pixel at the top-left of the display frame of each frame
    for frame in (z.forward, z.backward):
        frame[0, 0] = 1.0
    from pathlib import Path
    return Scan([z, i], pixels=(nx, ny), range_m=size, offset_m=offset, angle_deg=angle,
                direction=direction, bias_v=bias, source=Path(f"img{seed:03d}.sxm"))


SCANS = [
    make_scan(1, 32, 24, "down", 0.0, (0.0, 0.0), (10e-9, 7.5e-9), 0.5),
    make_scan(2, 16, 16, "up", 30.0, (12e-9, -3e-9), (5e-9, 5e-9), -1.2),
    make_scan(3, 48, 32, "up", -12.5, (-1e-7, 2e-7), (20e-9, 13e-9), 0.05),
]


def f32(x: float) -> float:
    return float(np.float32(x))


def assert_same_scan(got: Scan, want: Scan, channel_indexes=(14, 0)):
    assert got.pixels == want.pixels and got.direction == want.direction
    assert got.range_m == (f32(want.range_m[0]), f32(want.range_m[1]))
    assert got.offset_m == (f32(want.offset_m[0]), f32(want.offset_m[1]))
    assert got.angle_deg == f32(want.angle_deg)
    assert got.bias_v == f32(want.bias_v)
    assert [c.index for c in got.channels] == list(channel_indexes)
    for g in got.channels:
        w = next(c for c in want.channels if c.index == g.index)
        assert (g.name, g.unit) == (w.name, w.unit)
        np.testing.assert_array_equal(g.forward, w.forward)
        np.testing.assert_array_equal(g.backward, w.backward)
    # display frame: the marker is at the top-left, whatever direction the scan ran
    assert got.channel("Z").forward[0, 0] == 1.0 and got.channel("Z").backward[0, 0] == 1.0
    # the same physical point for the same pixel
    np.testing.assert_allclose(got.pixel_to_scanner(3, 5), want.pixel_to_scanner(3, 5), rtol=1e-6, atol=1e-15)


def test_three_frames_from_the_fake_server_equal_the_served_scans():
    with FakeNanonisServer(SCANS) as server, NanonisClient("127.0.0.1", server.port, timeout=5) as conn, \
            cf.ThreadPoolExecutor(1) as pool:
        for want in SCANS:
            future = pool.submit(conn.wait_for_scan, 30.0)
            assert server.wait_for_waiter(10)
            server.complete_scan()
            got = future.result(timeout=30)
            assert got is not None
            assert not got.partial
            assert got.name == want.name and got.header["NANONIS_FILE"].endswith(want.name)
            assert_same_scan(got, want)


def test_wait_times_out_with_none():
    with FakeNanonisServer(SCANS) as server, NanonisClient("127.0.0.1", server.port, timeout=5) as conn:
        assert conn.wait_for_scan(0.05) is None
        assert server.commands == ["Scan.WaitEndOfScan"]


def test_a_stopped_up_scan_has_its_bottom_lines_only():
    want = SCANS[1]  # up: acquisition starts at the bottom of the display frame
    with FakeNanonisServer([want]) as server, NanonisClient("127.0.0.1", server.port, timeout=5) as conn, \
            cf.ThreadPoolExecutor(1) as pool:
        server.start_scan()
        server.advance(5)
        assert conn.acquired_rows(14) == (5, "up")
        future = pool.submit(conn.wait_for_scan, 30.0)
        assert server.wait_for_waiter(10)
        server.stop_scan()
        got = future.result(timeout=30)
    ny = want.shape[0]
    assert got.partial and got.nan_rows == ny - 5
    z = got.channel("Z")
    assert np.isnan(z.forward[: ny - 5]).all()
    np.testing.assert_array_equal(z.forward[ny - 5:], want.channel("Z").forward[ny - 5:])
    np.testing.assert_array_equal(z.backward[ny - 5:], want.channel("Z").backward[ny - 5:])


def test_channel_selection_grabs_only_the_chosen_slots():
    with FakeNanonisServer(SCANS[:1]) as server, \
            NanonisClient("127.0.0.1", server.port, timeout=5, channel_indexes=[14]) as conn:
        server.complete_scan()
        got = conn.grab_scan()
    assert [c.name for c in got.channels] == ["Z"]


@pytest.mark.parametrize("fault, error", [("error", NanonisError), ("garbage", ProtocolError),
                                          ("truncate", ProtocolError), ("silent", NanonisTimeout)])
def test_bad_responses_raise_clear_errors_not_hangs(fault, error):
    with FakeNanonisServer(SCANS, faults={"Scan.FrameGet": fault}) as server, \
            NanonisClient("127.0.0.1", server.port, timeout=1.0) as conn:
        server.complete_scan()
        with pytest.raises(error) as info:
            conn.grab_scan()
    assert "Scan.FrameGet" in str(info.value)


def test_a_frame_without_size_is_a_clear_error():
    """A controller frame of no size (FrameGet 0 x 0 m) gives no scanner position to any defect: a
    ProtocolError naming it, which the connection treats as any bad answer, not a crash."""
    import copy

    flat = copy.deepcopy(SCANS[0])
    flat.range_m = (0.0, 0.0)  # after construction: the fake server serves what it is given
    with FakeNanonisServer([flat], faults={}) as server, NanonisClient("127.0.0.1", server.port, timeout=1.0) as conn:
        server.complete_scan()
        with pytest.raises(ProtocolError, match=r"scan frame: range_m \(0\.0, 0\.0\) m is not a positive"):
            conn.grab_scan()


def test_a_scan_of_no_size_is_refused_where_it_is_made():
    with pytest.raises(ValueError, match="not a positive width and height"):
        make_scan(1, 8, 8, "down", 0.0, (0.0, 0.0), (10e-9, 0.0), 0.5)


def test_garbage_names_the_problem():
    with FakeNanonisServer(SCANS, faults={"Bias.Get": "garbage"}) as server, \
            NanonisClient("127.0.0.1", server.port, timeout=1.0) as conn:
        with pytest.raises(ProtocolError, match="Bias.Get: not a Nanonis response"):
            conn.bias_get()


def test_settings_reject_bad_slots():
    with pytest.raises(ValueError):
        NanonisSettings(channel_indexes=[30]).check()
    assert math.isfinite(NanonisSettings().timeout_s)


@contextlib.contextmanager
def live_driver(scans: list[Scan]):
    """The fake server with ``scans``, the live driver on it, and the driver's first event once the
    first frame has 4 lines (checked to be that PartialScan): ``(server, driver, event)``."""
    from stmwatch.drivers.base import PartialScan
    from stmwatch.drivers.nanonis.connection import NanonisConnection

    with FakeNanonisServer(scans) as server:
        settings = NanonisSettings(port=server.port, poll_interval_s=0.05, timeout_s=5.0)
        with NanonisConnection(settings) as driver:
            server.start_scan()
            server.advance(4)
            event = driver.wait_for_acquisition(30)
            assert isinstance(event, PartialScan) and event.rows_done == 4
            yield server, driver, event


def test_daemon_driver_reports_lines_and_frames_even_a_missed_end_of_scan():
    from stmwatch.drivers.base import Acquisition

    up = SCANS[1]
    ny = up.shape[0]
    with live_driver([up, SCANS[0]]) as (server, driver, event), cf.ThreadPoolExecutor(1) as pool:
        assert event.new_rows == [ny - 1, ny - 2, ny - 3, ny - 4]  # an up scan fills from the bottom
        assert event.scan.nan_rows == ny - 4
        server.advance(ny)  # the frame ends while the driver is not in WaitEndOfScan
        event = driver.wait_for_acquisition(30)
        assert isinstance(event, Acquisition) and event.complete and event.source == "nanonis"
        assert_same_scan(event.scan, up)
        future = pool.submit(driver.wait_for_acquisition, 30)
        assert server.wait_for_waiter(10)
        server.complete_scan()
        event = future.result(timeout=30)
        assert isinstance(event, Acquisition) and event.path.endswith(SCANS[0].name)
        assert_same_scan(event.scan, SCANS[0])
        assert driver.wait_for_acquisition(0.1) is None


def test_a_frame_ended_unseen_as_the_next_begins_is_kept_not_lost():
    """Continuous scanning: the frame ends while the driver is away from End-of-Scan (grabbing
    progress, or the daemon handling the last event) and the next frame begins at once, so the
    status never reads idle. The ended frame is handed on (partial: as last grabbed), and the new
    frame's progress carries a new scan id."""
    from stmwatch.drivers.base import Acquisition, PartialScan

    first = SCANS[0]
    ny = first.shape[0]
    with live_driver([first, SCANS[1]]) as (server, driver, event):
        old_id = event.scan_id
        server.advance(ny)  # the frame ends while the driver is not in WaitEndOfScan ...
        server.start_scan()  # ... and the next one begins at once
        server.advance(3)
        event = driver.wait_for_acquisition(30)
        assert isinstance(event, Acquisition), "the ended frame was lost"
        assert not event.complete and event.scan.pixels == first.pixels
        assert event.scan.nan_rows == ny - 4
        np.testing.assert_array_equal(event.scan.channel("Z").forward[:4], first.channel("Z").forward[:4])
        event = driver.wait_for_acquisition(30)
        assert isinstance(event, PartialScan) and event.rows_done == 3 and event.scan_id != old_id
        assert event.scan.pixels == SCANS[1].pixels


def test_daemon_driver_survives_a_missing_server():
    from stmwatch.drivers.nanonis.connection import NanonisConnection

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with NanonisConnection(NanonisSettings(port=port, poll_interval_s=0.05)) as driver:
        assert driver.wait_for_acquisition(0.2) is None
        assert not driver.connected and driver.last_error


def test_daemon_with_the_nanonis_driver_stores_each_frame(tmp_path):
    from stmwatch.daemon.config import config_from_dict
    from stmwatch.daemon.daemon import Daemon
    from stmwatch.daemon.db import Database
    from stmwatch.models.sim.simulate import simulate_scan

    scans = [simulate_scan("si001h", seed, pixels=(96, 96), n_defects=4, direction=d)[0]
             for seed, d in ((1, "down"), (2, "up"))]
    with FakeNanonisServer(scans) as server:
        config = config_from_dict({
            "daemon": {"driver": "nanonis", "database": f"sqlite:///{tmp_path / 'n.db'}", "publish": "",
                       "analyser": "standin"},
            "nanonis": {"port": server.port, "poll_interval_s": 0.1},
            "live": {"publish": ""}})
        with Daemon(config) as daemon:
            for i, scan in enumerate(scans, 1):
                server.start_scan()
                # two requests later the driver has seen the scan running (StatusGet between them)
                assert server.wait_for_waiter(30, after=server.waits + 1)
                server.advance(scan.shape[0])  # the frame ends
                deadline = time.monotonic() + 60
                while daemon.pipeline.stats.submitted < i:  # grabbed and handed to the pipeline
                    assert time.monotonic() < deadline, "the frame never reached the pipeline"
                    time.sleep(0.02)
            assert daemon.wait_idle(60)
    with Database(config.daemon.database) as db:
        rows = db.scans()
    assert [r["source"] for r in rows] == ["nanonis", "nanonis"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [(r["columns"], r["rows"]) for r in rows] == [(96, 96), (96, 96)]
    assert rows[0]["range_x_m"] == pytest.approx(scans[0].range_m[0], rel=1e-6)
