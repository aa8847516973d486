"""The dashboard drawn by a recording rich console against a database whose contents we chose."""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import time

import numpy as np
import pytest
from rich.console import Console
from sqlalchemy import create_engine

from stmwatch.daemon.dashboard import LiveState, read_snapshot, render, sparkline, thumbnail
from stmwatch.daemon.db import Database
from stmwatch.daemon.documents import ResultDocument

T0 = dt.datetime(2026, 11, 25, 9, 0, 0)

# (name, status, labels of its defects, analysis ms, seconds from received to processed)
SCANS = [
    ("a001.sxm", "ok", ["dimer_vacancy", "dimer_vacancy", "db"], 400.0, 2.0),
    ("a002.sxm", "ok", ["db"], 500.0, 3.0),
    ("a003.sxm", "partial", ["dimer_vacancy", "step_edge_kink", "db", "db"], 700.0, 4.0),
    ("a004.sxm", "failed", [], None, 1.0),
    ("a005.sxm", "ok", [], 300.0, 5.0),
    ("a006.sxm", "ok", ["db"] * 7, 600.0, 6.0),
]


def make_doc(i: int, name: str, status: str, labels: list[str], ms: float | None, latency_s: float) -> ResultDocument:
    processed = T0 + dt.timedelta(minutes=2 * i)
    defects = [{"x_px": 10.0 + k, "y_px": 20.0 + k, "x_m": 1e-9 * k, "y_m": 2e-9 * k, "label": label,
                "score": 0.9, "area_px": 12.0} for k, label in enumerate(labels)]
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return ResultDocument(
        uid=f"uid{i}", path=f"/data/{name}", content_hash=f"hash{i}", source="folder", status=status,
        error="data truncated: 12 bytes after the header" if status == "failed" else None, surface="si001h",
        geometry={"pixels": [64, 64], "range_m": [6.4e-9, 6.4e-9], "offset_m": [0, 0], "angle_deg": 0,
                  "direction": "down"},
        acquired=None, received=processed - dt.timedelta(seconds=latency_s), processed=processed, defects=defects,
        counts=counts, timing_ms={"total": ms} if ms is not None else {"read": 1.0},
        model_versions={"segmenter": "unet-multi@0123456789ab"}, config_version="cfg")


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    with Database(url) as db:
        for i, scan in enumerate(SCANS):
            db.record(make_doc(i, *scan))
    return url


def draw(db_url, live=None, width=140, image=None) -> str:
    engine = create_engine(db_url)
    snap = read_snapshot(engine)
    engine.dispose()
    console = Console(record=True, width=width, color_system="truecolor", force_terminal=True, file=io.StringIO())
    console.print(render(snap, live, now=T0 + dt.timedelta(minutes=12), image=image))
    return console.export_text()


def test_totals_and_per_scan_counts(db_url):
    text = draw(db_url)
    assert "4 ok" in text and "1 partial" in text and "1 failed" in text
    # 15 defects: db 11, dimer_vacancy 3, step_edge_kink 1 (most frequent first)
    assert re.search(r"defects\s+15\s+db 11\s+dimer_vacancy 3\s+step_edge_kink 1", text)
    lines = {}
    for line in text.splitlines():
        m = re.search(r"ago\s+(a00\d\.sxm)\s", line)
        if m:
            lines[m.group(1)] = line
    assert len(lines) == 6
    assert re.search(r"ok\s+3\s+db 1\s+dimer_vacancy 2", lines["a001.sxm"])
    assert re.search(r"partial\s+4\s+db 2\s+dimer_vacancy 1\s+step_edge_kink 1", lines["a003.sxm"])
    assert re.search(r"ok\s+7\s+db 7", lines["a006.sxm"])
    assert "failed" in lines["a004.sxm"] and "data truncated" in lines["a004.sxm"]
    assert re.search(r"ok\s+0\s+-", lines["a005.sxm"])


def test_latency_throughput_and_history(db_url):
    text = draw(db_url)
    # analysis times of the non-failed scans: 400 500 700 300 600 ms -> median 500, p95 680
    assert "median 500 ms" in text and "p95 680 ms" in text
    # received -> stored: 2 3 4 1 5 6 s -> median 3.5 s, p95 5.8 s
    assert "median 3.5 s" in text and "p95 5.8 s" in text
    # 6 scans 2 min apart: 5 intervals in 10 min
    assert "0.5 scans/min" in text
    # defects per non-failed scan, oldest first: 3 1 4 0 7
    assert sparkline([3, 1, 4, 0, 7]) in text
    assert "no daemon heartbeat" in text


def test_sparkline_scales_to_the_maximum():
    assert sparkline([0, 7, 14]) == "▁▅█"  # 7/14 of 7 steps = 3.5 → step 4
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""


def test_live_heartbeat_and_progress_are_shown(db_url):
    live = LiveState()
    live.update([b"live", json.dumps({"kind": "status", "queued": 3, "driver": "stream",
                                      "backend": "onnxruntime-cpu", "current": "stream:s42"}).encode()])
    live.update([b"live", json.dumps({"kind": "progress", "scan_id": "s42", "name": "stream:s42",
                                      "rows_done": 64, "rows": 256, "n_defects": 5}).encode()])
    text = draw(db_url, live)
    assert "daemon up" in text and "backend onnxruntime-cpu" in text
    assert re.search(r"queue\s+3", text)
    assert "64/256 lines, 5 defects so far" in text
    live.status_at = time.monotonic() - 60  # the daemon went quiet (restarting)
    assert "daemon not answering" in draw(db_url, live)
    live.progress_at = time.monotonic() - 60  # and the scan stopped sending lines long ago
    assert "64/256" not in draw(db_url, live)


def test_unreadable_database_is_shown_not_raised(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    text = draw(f"sqlite:///{tmp_path / 'junk.db'}")
    assert "database:" in text and "DatabaseError" in text


def test_thumbnail_half_blocks_and_defect_colour():
    image = np.zeros((8, 8))
    image[:4] = 1.0  # top half bright
    text = thumbnail(image, [(6.0, 6.0, "dangling_bond")], width=4)
    assert text.plain == "▀▀▀▀\n▀▀▀▀"
    styles = [str(span.style) for span in text.spans]
    # first line: bright (white) above bright; second line: dark above dark, except the defect pixel
    assert styles[0] == "rgb(255,255,255) on rgb(255,255,255)"
    assert styles[4] == "rgb(0,0,0) on rgb(0,0,0)"
    assert styles[7] == "rgb(0,0,0) on rgb(0,230,255)"  # row 6 → pixel row 3 (bottom of line 2), col 3


def test_thumbnail_panel_drawn_with_the_last_scan(db_url):
    text = draw(db_url, image=np.random.default_rng(0).normal(size=(64, 64)))
    assert "last scan: a006.sxm" in text and "▀" in text


def test_feed_hears_the_daemon_again_after_it_restarts():
    """The live publisher goes away and comes back on the same endpoint (a daemon restart): the
    dashboard's feed picks up its heartbeats again without being restarted itself."""
    from stmwatch.daemon.dashboard import Feed
    from stmwatch.daemon.live import LivePublisher

    def heard(feed, publisher, state, queued) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            publisher({"kind": "status", "queued": queued, "driver": "stream"})
            feed.poll(state, timeout_s=0.1)
            if state.status and state.status.get("queued") == queued:
                return True
        return False

    first = LivePublisher("tcp://127.0.0.1:*")
    endpoint = first.endpoint
    feed = Feed([endpoint])
    state = LiveState()
    try:
        assert heard(feed, first, state, 1)
        first.close()
        second = LivePublisher(endpoint)
        try:
            assert heard(feed, second, state, 2)
        finally:
            second.close()
    finally:
        feed.close()


def test_a_scan_with_warnings_is_marked_and_its_warning_shown(tmp_path):
    url = f"sqlite:///{tmp_path / 'warn.db'}"
    with Database(url) as db:
        for i, scan in enumerate(SCANS[:2]):
            doc = make_doc(i, *scan)
            if i == 1:
                doc.warnings = ["double tip: a second apex images every feature again 1.20 nm away"]
            db.record(doc)
    text = draw(url, width=200)
    [a001] = [line for line in text.splitlines() if re.search(r"ago\s+a001\.sxm\s+si001h", line)]
    [a002] = [line for line in text.splitlines() if re.search(r"ago\s+a002\.sxm\s+si001h", line)]
    assert "⚠" in a002 and "db 1" in a002 and "⚠" not in a001
    assert re.search(r"a002\.sxm: double tip: a second apex images every feature again 1\.20 nm away", text)
    assert "errors and warnings" in text


def test_the_dashboard_brings_an_older_database_up_to_date(tmp_path):
    """A database written before schema 2 (no scans.warnings) is upgraded when the dashboard
    opens it, as the daemon would, instead of failing to read every scan."""
    import sqlite3

    from stmwatch.daemon.dashboard import Dashboard

    path = tmp_path / "v1.db"
    with Database(f"sqlite:///{path}") as db:
        db.record(make_doc(0, *SCANS[0]))
    con = sqlite3.connect(path)
    if sqlite3.sqlite_version_info < (3, 35):
        pytest.skip("SQLite before 3.35 cannot drop a column")
    con.execute("ALTER TABLE scans DROP COLUMN warnings")
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    board = Dashboard(f"sqlite:///{path}", [], console=Console(file=io.StringIO()))
    snap = read_snapshot(board.engine)
    board.engine.dispose()
    assert snap.error is None and [s.name for s in snap.scans] == ["a001.sxm"] and snap.scans[0].warnings == []


def test_last_scan_defect_positions_in_nm_and_a_double_tip_alert(tmp_path):
    url = f"sqlite:///{tmp_path / 'tip.db'}"
    with Database(url) as db:
        for i, scan in enumerate(SCANS[:3]):
            doc = make_doc(i, *scan)
            if i == 2:
                doc.warnings = ["double tip: a second apex images every feature again 1.20 nm away"]
            db.record(doc)
    text = draw(url, width=200)
    # make_doc puts defect k at (k, 2k) nm: a003's four, numbered 0..3 as stored
    assert "a003.sxm: defects at (nm, scanner frame)" in text
    for k, label in enumerate(["dimer_vacancy", "step_edge_kink", "db", "db"]):
        assert re.search(rf"\b{k}\s+{label}\s+{k:.2f}\s+{2 * k:.2f}\b", text), (k, text)
    alert = [line for line in text.splitlines() if "DOUBLE TIP" in line]
    assert len(alert) == 1 and "1.20 nm away" in alert[0]
    # the alert is the current tip's: a later scan without the warning clears it
    with Database(url) as db:
        db.record(make_doc(3, "a009.sxm", "ok", ["db"], 300.0, 1.0))
    assert "DOUBLE TIP" not in draw(url, width=200)


def test_the_dashboard_command_refuses_a_database_that_is_not_there(tmp_path, capsys, monkeypatch):
    """As ``query``: a mistyped SQLite path is named, and no empty database file is left there."""
    from stmwatch.daemon.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["dashboard", "--once", "--db", "sqlite:///typo.db", "--connect", "tcp://127.0.0.1:1"]) == 2
    assert "no database at typo.db" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()
