"""The pipeline: one direction, failures recorded and passed over, back-pressure, idempotency."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from stmwatch.daemon.config import Config
from stmwatch.drivers.base import Acquisition, PartialScan, sha256
from stmwatch.daemon.pipeline import Pipeline, config_version
from stmwatch.drivers.sxm import read_sxm_bytes, sxm_bytes
from stmwatch.models.analyse import Analyser
from stmwatch.models.defects import Defect
from stmwatch.models.sim.simulate import simulate_scan

from .conftest import BAD


class TruthSegmenter:
    """Finds exactly the simulator's defects (pixel positions from the truth); raises on request."""

    name, version = "truth", "0"

    def __init__(self, truths: dict[str, list], fail_on: set[str] = frozenset(), gate: threading.Event | None = None):
        self.truths, self.fail_on, self.gate = truths, fail_on, gate

    def segment(self, scan):
        if self.gate is not None:
            assert self.gate.wait(10)
        if scan.name in self.fail_on:
            raise RuntimeError("simulated model failure")
        out = []
        for t in self.truths.get(scan.name, []):
            x, y = scan.pixel_to_scanner(t.row, t.col)
            out.append(Defect(row=t.row, col=t.col, x_m=float(x), y_m=float(y), area_px=10.0, score=0.9, label=t.cls))
        return out


def simulated(name: str, seed: int):
    scan, truth = simulate_scan("si001h", seed, pixels=(48, 40), offset_m=(3e-9, -2e-9), angle_deg=20.0,
                                 n_defects=3)
    raw = sxm_bytes(scan)
    return Acquisition(path=name, content_hash=sha256(raw), source="folder", raw=raw), truth


def pipeline_with(segmenter, sinks, **kw) -> Pipeline:
    return Pipeline(Analyser(segmenter), sinks, surface="si001h", config_version="cfg", **kw)


def test_results_follow_the_truth_and_failures_are_recorded_and_passed_over():
    good, truth = simulated("good.sxm", 1)
    broken_model, _ = simulated("model_fails.sxm", 2)
    after, truth_after = simulated("after.sxm", 3)
    bad_raw = (BAD / "truncated_half_data.sxm").read_bytes()
    bad = Acquisition(path="bad.sxm", content_hash=sha256(bad_raw), source="folder", raw=bad_raw)
    seg = TruthSegmenter({"good.sxm": truth.defects, "after.sxm": truth_after.defects}, fail_on={"model_fails.sxm"})
    docs = []
    p = pipeline_with(seg, [docs.append])
    p.start()
    for acq in (good, bad, broken_model, after):
        assert p.submit(acq, timeout=5)
    assert p.wait_idle(30)
    p.stop()
    assert [(d.path, d.status) for d in docs] == [
        ("good.sxm", "ok"), ("bad.sxm", "failed"), ("model_fails.sxm", "failed"), ("after.sxm", "ok")]
    assert "data truncated" in docs[1].error and docs[1].error.startswith("bad.sxm:")
    assert docs[2].error == "analysis failed: RuntimeError: simulated model failure"
    for doc, t in ((docs[0], truth), (docs[3], truth_after)):
        assert len(doc.defects) == len(t.defects) > 0
        for d, td in zip(doc.defects, t.defects):
            assert d["label"] == td.cls
            assert abs(d["x_m"] - td.x_m) < 1e-12 and abs(d["y_m"] - td.y_m) < 1e-12
        assert doc.counts == t.counts()
        assert doc.model_versions == {"segmenter": "truth@0"} and doc.config_version == "cfg"
        assert doc.geometry["offset_m"] == [3e-9, -2e-9] and doc.geometry["angle_deg"] == 20.0
    assert (p.stats.ok, p.stats.failed) == (2, 2)


def test_known_scans_are_skipped_before_reading():
    acq, _ = simulated("a.sxm", 1)
    docs = []
    p = pipeline_with(TruthSegmenter({}), [docs.append], is_known=lambda path, h: h == acq.content_hash)
    assert p.process(acq) is None and docs == [] and p.stats.skipped == 1


def test_a_short_file_or_missing_lines_is_partial():
    acq, _ = simulated("cut.sxm", 4)
    cut = Acquisition(path="cut.sxm", content_hash="c", source="folder", raw=acq.raw[: len(acq.raw) // 2],
                      complete=False)
    scan = read_sxm_bytes(acq.raw)
    for ch in scan.channels:
        for f in ch.frames():
            f[30:] = np.nan
    aborted = Acquisition(path="stream:x", content_hash="d", source="stream", scan=scan)
    empty = read_sxm_bytes(acq.raw)
    for ch in empty.channels:
        for f in ch.frames():
            f[:] = np.nan
    nothing = Acquisition(path="stream:y", content_hash="e", source="stream", scan=empty)
    p = pipeline_with(TruthSegmenter({}), [])
    assert p.process(cut).status == "partial"
    doc = p.process(aborted)
    assert doc.status == "partial" and doc.nan_rows == 10
    doc = p.process(nothing)
    assert doc.status == "failed" and "no data" in doc.error


def test_a_failing_sink_does_not_stop_the_others():
    acq, _ = simulated("a.sxm", 1)
    docs = []

    def broken(doc):
        raise OSError("disk full")

    p = pipeline_with(TruthSegmenter({}), [broken, docs.append])
    p.process(acq)
    assert [d.path for d in docs] == ["a.sxm"]


def test_a_full_queue_pushes_back_on_the_driver():
    gate = threading.Event()
    docs = []
    p = pipeline_with(TruthSegmenter({}, gate=gate), [docs.append], queue_size=1)
    p.start()
    acqs = [simulated(f"{i}.sxm", i)[0] for i in range(3)]
    assert p.submit(acqs[0], timeout=1)
    # the worker holds scan 0 (gate closed), the queue holds scan 1, scan 2 must wait
    assert p.submit(acqs[1], timeout=5)
    assert not p.submit(acqs[2], timeout=0.2)
    assert not p.wait_idle(0.1)
    gate.set()
    assert p.submit(acqs[2], timeout=10)
    assert p.wait_idle(30)
    p.stop()
    assert [d.path for d in docs] == ["0.sxm", "1.sxm", "2.sxm"]


def test_stop_without_drain_drops_the_queue_but_finishes_the_scan_in_hand():
    gate = threading.Event()
    docs = []
    p = pipeline_with(TruthSegmenter({}, gate=gate), [docs.append], queue_size=4)
    p.start()
    for i in range(3):
        p.submit(simulated(f"{i}.sxm", i)[0])
    threading.Timer(0.3, gate.set).start()
    p.stop(drain=False, timeout=30)
    assert [d.path for d in docs] == ["0.sxm"]


def test_partial_hooks_see_running_scans_and_errors_are_contained():
    scan = read_sxm_bytes(simulated("a.sxm", 1)[0].raw)
    seen = []

    def bad_hook(event):
        raise ValueError("hook bug")

    p = pipeline_with(TruthSegmenter({}), [], partial_hooks=[bad_hook, seen.append])
    event = PartialScan("s", scan, 3, [2])
    p.partial(event)
    assert seen == [event]


def test_config_version_changes_with_any_value_but_not_the_file_name(tmp_path):
    a, b = Config(), Config()
    b.source = tmp_path / "x.toml"
    assert config_version(a) == config_version(b) and len(config_version(a)) == 12
    b.models.threshold = 0.6
    assert config_version(a) != config_version(b)


def test_daemon_reload_switches_database_and_folder_and_publishes_pngs(tmp_path):
    import dataclasses
    import json

    import zmq

    from stmwatch.daemon.config import DaemonSettings
    from stmwatch.daemon.daemon import Daemon
    from stmwatch.daemon.db import Database
    from stmwatch.drivers.folder.settings import FolderSettings
    from stmwatch.drivers.sxm import write_sxm
    from stmwatch.models.standin import standin_analyser

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    config = Config(daemon=DaemonSettings(database=f"sqlite:///{tmp_path / 'a.db'}", publish="tcp://127.0.0.1:*",
                                          publish_png=True),
                    folder=FolderSettings(path=str(a), stable_s=1.0))
    states = []
    daemon = Daemon(config, analyser=standin_analyser(), on_state=states.append)
    daemon.start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"overlay")
    sub.connect(daemon.publisher.endpoint)
    try:
        scan, _ = simulate_scan("si001h", 5, pixels=(48, 48), n_defects=3)
        import time

        time.sleep(0.3)  # the SUB joins
        write_sxm(scan, a / "one.sxm")
        assert sub.poll(30_000), "no overlay"
        frames = sub.recv_multipart()
        assert json.loads(frames[1])["file"] == str(a / "one.sxm")
        assert frames[2][:8] == b"\x89PNG\r\n\x1a\n"
        new = dataclasses.replace(config, folder=FolderSettings(path=str(b), stable_s=1.0))
        new.daemon = dataclasses.replace(config.daemon, database=f"sqlite:///{tmp_path / 'b.db'}", publish="")
        daemon.reload(new)
        write_sxm(scan, b / "two.sxm")
        write_sxm(simulate_scan("si001h", 6, pixels=(48, 48))[0], a / "ignored_now.sxm")
        deadline = time.monotonic() + 30
        while not Database(new.daemon.database).scans() and time.monotonic() < deadline:
            time.sleep(0.1)
        daemon.wait_idle(30)
    finally:
        daemon.stop()
        sub.close()
        ctx.term()
    assert [r["path"] for r in Database(config.daemon.database).scans()] == [str(a / "one.sxm")]
    assert [r["path"] for r in Database(new.daemon.database).scans()] == [str(b / "two.sxm")]
    assert states == ["starting", "ready", "stopping", "stopped", "starting", "ready", "stopping", "stopped"]


def test_a_driver_that_fails_is_reopened(tmp_path, monkeypatch, caplog):
    import stmwatch.daemon.daemon as daemon_module
    from stmwatch.daemon.config import DaemonSettings

    acq, truth = simulated("after_restart.sxm", 7)
    opened = []

    class Flaky:
        """First connection: the share went away (OSError). Second: one scan."""

        def __init__(self):
            self.n = len(opened)
            self.sent = False
            opened.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def wait_for_acquisition(self, timeout):
            if self.n == 0:
                raise OSError("Stale file handle")
            if not self.sent:
                self.sent = True
                return acq
            return None

    monkeypatch.setattr(daemon_module, "open_driver", lambda config: Flaky())
    monkeypatch.setattr(daemon_module, "RESTART_S", 0.05)
    monkeypatch.setattr(daemon_module, "MAX_RESTARTS", 1)
    docs = []
    config = Config(daemon=DaemonSettings(database=f"sqlite:///{tmp_path / 'r.db'}", publish=""))
    d = daemon_module.Daemon(config, analyser=Analyser(TruthSegmenter({"after_restart.sxm": truth.defects})),
                             sinks=[docs.append])
    d.start()
    try:
        import time

        deadline = time.monotonic() + 20
        while not docs and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        d.stop()
    assert isinstance(d.last_driver_error, OSError) and d.driver_error is None
    assert len(opened) == 2  # opened in start() and failed; reopened
    restart = [r for r in caplog.records if "reopening it" in r.getMessage()]
    assert restart and "Stale file handle" in restart[0].getMessage()
    assert restart[0].exc_info is None  # a named OSError is one line in the journal, not a traceback
    assert [doc.path for doc in docs] == ["after_restart.sxm"] and len(docs[0].defects) == len(truth.defects)


def test_a_driver_that_keeps_failing_gives_up(tmp_path, monkeypatch):
    import time

    import stmwatch.daemon.daemon as daemon_module
    from stmwatch.daemon.config import DaemonSettings

    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def wait_for_acquisition(self, timeout):
            raise OSError("gone for good")

    monkeypatch.setattr(daemon_module, "open_driver", lambda config: Broken())
    monkeypatch.setattr(daemon_module, "RESTART_S", 0.01)
    config = Config(daemon=DaemonSettings(database=f"sqlite:///{tmp_path / 'g.db'}", publish=""))
    d = daemon_module.Daemon(config, analyser=Analyser(TruthSegmenter({})))
    d.start()
    deadline = time.monotonic() + 20
    while d.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not d.running and isinstance(d.driver_error, OSError)
    d.stop()


def test_a_taken_publish_endpoint_is_a_clear_error():
    """Both publishers bind through one helper; a port in use names the endpoint."""
    from stmwatch.daemon.live import LivePublisher
    from stmwatch.daemon.publisher import OverlayPublisher

    first = OverlayPublisher("tcp://127.0.0.1:*")
    try:
        for publisher in (OverlayPublisher, LivePublisher):
            with pytest.raises(ValueError, match=re.escape(f"cannot publish on '{first.endpoint}'")):
                publisher(first.endpoint)
    finally:
        first.close()


def test_the_segmenters_warnings_reach_the_document_and_the_log(caplog):
    class WarningSegmenter(TruthSegmenter):
        def segment(self, scan):
            self.last_warnings = [f"double tip in {scan.name}"]
            return super().segment(scan)

    acq, truth = simulated("tip.sxm", 4)
    docs = []
    p = pipeline_with(WarningSegmenter({"tip.sxm": truth.defects}), [docs.append])
    with caplog.at_level("WARNING", logger="stmwatch.daemon.pipeline"):
        p.process(acq)
    [doc] = docs
    assert doc.status == "ok" and doc.warnings == ["double tip in tip.sxm"]
    assert "tip.sxm: double tip in tip.sxm" in caplog.text


def test_a_stream_header_with_a_bad_surface_does_not_hold_back_the_scans_after_it(tmp_path, caplog):
    """A stream scan's ``surface`` is whatever the sender wrote (a JSON object, an over-long
    name): before, the database refused the row, the pipeline retried it for ever and no later
    scan was stored. Now the configured surface is recorded, with a warning."""
    from stmwatch.daemon.db import Database

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    bad, truth = simulated("stream:bad", 5)
    good, truth_good = simulated("stream:good", 6)
    long_name, truth_long = simulated("stream:long", 7)
    bad.surface, long_name.surface, good.surface = {"name": "si001h"}, "s" * 40, "ge001"
    seg = TruthSegmenter({"stream:bad": truth.defects, "stream:good": truth_good.defects,
                          "stream:long": truth_long.defects})
    p = pipeline_with(seg, [], is_known=db.seen, store=db.record, retry_s=(0.05, 0.1))
    p.start()
    try:
        with caplog.at_level("WARNING", logger="stmwatch.daemon.pipeline"):
            for acq in (bad, long_name, good):
                assert p.submit(acq, timeout=5)
            assert p.wait_idle(30), p.store_error
    finally:
        p.stop(drain=False, timeout=10)
    surfaces = {row["path"]: row["surface"] for row in db.scans()}
    db.close()
    assert surfaces == {"stream:bad": "si001h", "stream:long": "si001h", "stream:good": "ge001"}
    assert p.stats.store_retries == 0 and "not a surface key" in caplog.text
