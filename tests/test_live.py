"""Live segmentation of a scan still being acquired, against the whole-frame segmentation of the
same scan (the simulator's scan, fed line by line in acquisition order)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from stmwatch.drivers.base import PartialScan
from stmwatch.daemon.live import LIVE_VERSION, LiveSegmenter, LiveSettings, band_scan, radius_px
from stmwatch.drivers.scan import Channel, Scan
from stmwatch.models.sim.simulate import simulate_scan
from stmwatch.models.standin import StandinSegmenter


def empty_like(scan: Scan) -> Scan:
    return Scan([Channel(c.name, c.unit, forward=np.full_like(c.forward, np.nan),
                         backward=np.full_like(c.backward, np.nan)) for c in scan.channels],
                pixels=scan.pixels, range_m=scan.range_m, offset_m=scan.offset_m, angle_deg=scan.angle_deg,
                direction=scan.direction)


def feed(scan: Scan, live: LiveSegmenter, scan_id: str = "s1") -> None:
    """Acquire ``scan`` line by line (top first for down, bottom first for up) into the hook."""
    running = empty_like(scan)
    ny = scan.shape[0]
    rows = range(ny) if scan.direction == "down" else range(ny - 1, -1, -1)
    for k, r in enumerate(rows):
        for dst, src in zip(running.channels, scan.channels):
            dst.forward[r], dst.backward[r] = src.forward[r], src.backward[r]
        live(PartialScan(scan_id, running, k + 1, [r]))


def test_band_pixels_are_the_same_scanner_points():
    scan, _ = simulate_scan("si001h", 1, pixels=(64, 48), angle_deg=25.0, offset_m=(3e-8, -1e-8), n_defects=0)
    band = band_scan(scan, 10, 30)
    assert band.shape == (20, 64)
    rows, cols = np.mgrid[0:20, 0:64]
    np.testing.assert_allclose(band.pixel_to_scanner(rows, cols), scan.pixel_to_scanner(rows + 10, cols),
                               rtol=0, atol=1e-15)
    np.testing.assert_array_equal(band.channel("Z").forward, scan.channel("Z").forward[10:30])


@pytest.mark.parametrize("direction", ["down", "up"])
def test_live_defects_agree_with_the_whole_frame(direction):
    scan, _ = simulate_scan("si001h", 3, pixels=(160, 160), n_defects=10, direction=direction, angle_deg=10.0,
                            offset_m=(2e-8, 1e-8))
    segmenter = StandinSegmenter("si001h")
    whole = segmenter.segment(scan)
    assert len(whole) >= 6
    messages, published = [], []
    live = LiveSegmenter(segmenter, LiveSettings(every_lines=1), messages.append, threaded=False,
                         on_publish=lambda d, rows_done, t: published.append((d, rows_done)))
    feed(scan, live)
    nm = scan.pixel_size_m[0] * 1e9
    ny = scan.shape[0]

    # the final live overlay (scan_end) is the whole-frame result, every defect within 0.2 nm
    end = messages[-1]
    assert end["kind"] == "scan_end" and end["rows_done"] == ny
    assert len(end["defects"]) == len(whole)
    for w in whole:
        assert min(math.hypot(d["y_px"] - w.row, d["x_px"] - w.col) for d in end["defects"]) * nm <= 0.2
        x, y = scan.pixel_to_scanner(w.row, w.col)
        d = min(end["defects"], key=lambda d: math.hypot(d["y_px"] - w.row, d["x_px"] - w.col))
        assert math.hypot(d["x_m"] - x, d["y_m"] - y) <= 0.2e-9

    # most defects were published while the scan ran, where the whole frame puts them
    early, delays = 0, []
    for w in whole:
        r = radius_px(w.area_px)
        last_line = (w.row + r - 0.5) if direction == "down" else (ny - 1 - (w.row - r + 0.5))  # in acquisition order
        hits = [(d, rd) for d, rd in published if math.hypot(d["y_px"] - w.row, d["x_px"] - w.col) * nm <= 0.2]
        if hits and hits[0][1] < ny:
            early += 1
            delays.append(hits[0][1] - (math.ceil(last_line - 1e-6) + 1))
    assert early >= 0.75 * len(whole)
    # published after the line that completes it had arrived (never before), median within 2 lines
    assert min(delays) >= -1 and float(np.median(delays)) <= 2
    # the ids of confirmed live defects are kept in the final list
    live_ids = {d["id"] for d, _ in published}
    assert end["confirmed"] == len(live_ids & {d["id"] for d in end["defects"]})
    assert end["confirmed"] >= early
    assert set(end["retracted"]) == live_ids - {d["id"] for d in end["defects"]}


def test_threaded_hook_keeps_only_the_newest_state_and_finishes():
    scan, _ = simulate_scan("si001h", 5, pixels=(96, 96), n_defects=6)
    messages = []
    live = LiveSegmenter(StandinSegmenter("si001h"), LiveSettings(every_lines=4), messages.append)
    try:
        feed(scan, live)
        assert live.wait_idle(60)
    finally:
        live.close()
    assert messages[-1]["kind"] == "scan_end"
    rows = [m["rows_done"] for m in messages]
    assert rows == sorted(rows) and rows[-1] == 96
    assert live.passes <= 96 // 4 + 1


def test_every_lines_sets_how_often_it_segments():
    scan, _ = simulate_scan("si001h", 5, pixels=(64, 64), n_defects=3)
    live = LiveSegmenter(StandinSegmenter("si001h"), LiveSettings(every_lines=8), threaded=False)
    feed(scan, live)
    assert live.passes == 64 // 8


def test_daemon_streams_live_defects_and_the_final_list_is_the_overlay(tmp_path):
    """End to end: a simulated microscope streams a scan line by line to the daemon; live defects
    arrive on the live endpoint while the scan runs, and the final live list equals the pipeline's
    overlay of the whole frame (scanner-frame metres, within 0.2 nm)."""
    import json
    import time

    import zmq

    from stmwatch.daemon.config import config_from_dict
    from stmwatch.daemon.daemon import Daemon
    from stmwatch.daemon.publisher import decode_overlay
    from stmwatch.daemon.service import LiveSide
    from stmwatch.drivers.stream.sim import StreamSimulator

    scan, _ = simulate_scan("si001h", 7, pixels=(128, 128), n_defects=8, angle_deg=-20.0, offset_m=(5e-9, 0.0))
    ny = scan.shape[0]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (b"overlay", b"live"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    daemon = live = None
    try:
        with StreamSimulator(context=ctx) as sim:
            config = config_from_dict({
                "daemon": {"driver": "stream", "database": f"sqlite:///{tmp_path / 'live.db'}",
                           "publish": "tcp://127.0.0.1:*", "analyser": "standin"},
                "stream": {"endpoint": sim.endpoint},
                "live": {"publish": "tcp://127.0.0.1:*", "every_lines": 1}})
            daemon = Daemon(config)
            daemon.start()
            live = LiveSide(daemon)
            sub.connect(daemon.publisher.endpoint)
            sub.connect(live.publisher.endpoint)
            deadline = time.monotonic() + 30
            while not sub.poll(100):  # until our subscription reaches the live publisher
                live._next_beat = 0.0
                live.beat(time.monotonic())
                assert time.monotonic() < deadline
            assert sim.wait_for_subscriber(30)
            sim.send_scan(scan, "s1", line_rate=50.0)  # 2.6 s: time for live passes on a loaded machine
            messages, overlay = [], None
            deadline = time.monotonic() + 120
            while overlay is None:
                assert sub.poll(int(max(1, deadline - time.monotonic()) * 1000)), f"no overlay; got {messages[-3:]}"
                frames = sub.recv_multipart()
                if frames[0] == b"overlay":
                    overlay, _ = decode_overlay(frames)
                else:
                    message = json.loads(frames[1])
                    if message["kind"] != "status":
                        messages.append(message)
            assert live.hook.wait_idle(60)
            while sub.poll(200):  # the scan_end message, if the overlay overtook it
                frames = sub.recv_multipart()
                if frames[0] == b"live" and json.loads(frames[1])["kind"] != "status":
                    messages.append(json.loads(frames[1]))
    finally:
        if live is not None:
            live.close()
        if daemon is not None:
            daemon.stop(drain=True)
        sub.close()
        ctx.term()

    assert overlay["file"] == "stream:s1" and overlay["n_defects"] >= 5
    assert {m["version"] for m in messages} == {LIVE_VERSION}  # a consumer can tell the schema
    early = [d for m in messages if m["kind"] == "defects" and m["rows_done"] < ny for d in m["defects"]]
    assert early, "no defect was published while the scan was running"
    end = [m for m in messages if m["kind"] == "scan_end"]
    assert len(end) == 1
    final = end[0]["defects"]
    assert len(final) == overlay["n_defects"]
    for d in overlay["defects"]:
        nearest = min(math.hypot(f["x_m"] - d["x_m"], f["y_m"] - d["y_m"]) for f in final)
        assert nearest <= 0.2e-9
    confirmed = sum(1 for d in overlay["defects"]
                    if any(math.hypot(e["x_m"] - d["x_m"], e["y_m"] - d["y_m"]) <= 0.2e-9 for e in early))
    assert confirmed >= 0.6 * overlay["n_defects"]


@pytest.mark.parametrize("direction", ["down", "up"])
def test_unet_band_passes_publish_the_whole_frame_defects(direction, tmp_path):
    """The shipped UNet on ONNX Runtime, as the daemon's live hook runs it: each band untiled with
    one flip ([live] flips), the whole frame with [models] test_time_flips. What is published live
    is the whole-frame result (within 0.2 nm), and almost all of it while the scan runs."""
    pytest.importorskip("onnxruntime")
    from stmwatch.daemon.config import config_from_dict
    from stmwatch.daemon.live import live_analyser

    config = config_from_dict({"models": {"engine_cache": str(tmp_path), "backend": "onnxruntime"}})
    analyser = live_analyser(config)
    segmenter = analyser.segmenter
    assert segmenter.backend.name == "onnxruntime" and segmenter.flips == 4
    scan, _ = simulate_scan("si001h", 21, pixels=(128, 128), n_defects=10, direction=direction)
    whole = segmenter.segment(scan)
    assert len(whole) >= 6
    published = []
    live = LiveSegmenter(segmenter, LiveSettings(every_lines=1), threaded=False,
                         on_publish=lambda d, rows_done, t: published.append((d, rows_done)))
    feed(scan, live)
    assert live._band_untiled  # the band passes ran untiled (the export takes any height)
    nm, ny = scan.pixel_size_m[0] * 1e9, scan.shape[0]
    early = [d for d, rows_done in published if rows_done < ny]
    matched = [w for w in whole if any(math.hypot(d["y_px"] - w.row, d["x_px"] - w.col) * nm <= 0.2 for d in early)]
    assert len(matched) >= len(whole) - 1
    extras = [d for d in early if not any(math.hypot(d["y_px"] - w.row, d["x_px"] - w.col) * nm <= 0.4 for w in whole)]
    assert len(extras) <= 1


def test_live_flips_must_be_1_2_or_4():
    from stmwatch.daemon.config import ConfigError, config_from_dict

    assert config_from_dict({"live": {"flips": 2}}).live.flips == 2
    with pytest.raises(ConfigError, match="flips"):
        config_from_dict({"live": {"flips": 3}})


def test_live_analyser_runs_int8_for_auto_on_a_cpu(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import torch

    from stmwatch.daemon.config import config_from_dict
    from stmwatch.daemon.live import live_analyser
    from stmwatch.models import quantize

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU there")
    calibration = [np.random.default_rng(2).normal(size=(2, 2, 256, 256)).astype(np.float32)]
    monkeypatch.setattr(quantize, "calibration_batches", lambda tile, *a, **k: calibration)  # seconds saved
    auto = live_analyser(config_from_dict({"models": {"engine_cache": str(tmp_path)}}))
    assert auto.segmenter.backend.name == "onnxruntime-int8"
    named = live_analyser(config_from_dict({"models": {"engine_cache": str(tmp_path), "backend": "torch"}}))
    assert named.segmenter.backend.name == "torch"
