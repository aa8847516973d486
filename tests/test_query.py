"""``stmwatch query``: scans, defects and counts from the database, as table, JSON or CSV."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from stmwatch.daemon.cli import main
from stmwatch.daemon.commands.query import parse_when
from stmwatch.daemon.db import Database, Filters

from .test_db import make_doc

NOW = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    with Database(url) as db:
        db.record(make_doc("old.sxm", "h1", defects=[("vacancy", 1, 2)], processed=NOW - dt.timedelta(hours=5)))
        db.record(make_doc("new.sxm", "h2", defects=[("vacancy", 3, 4), ("adsorbate", 5, 6)], surface="ge001",
                           processed=NOW - dt.timedelta(minutes=10)))
        db.record(make_doc("bad.sxm", "h3", status="failed", error="bad.sxm: file is empty",
                           processed=NOW - dt.timedelta(minutes=5)))
    return url


def query(capsys, *args) -> tuple[int, str]:
    code = main(["query", *args])
    return code, capsys.readouterr().out


def test_json_scans_are_objects_keyed_by_column(capsys, url):
    code, out = query(capsys, "scans", "--db", url, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["path"] for r in rows] == ["old.sxm", "new.sxm", "bad.sxm"]
    assert {"id", "path", "status", "error", "n_defects"} <= set(rows[0])
    assert [(r["status"], r["n_defects"], r["error"]) for r in rows] == [
        ("ok", 1, None), ("ok", 2, None), ("failed", 0, "bad.sxm: file is empty")]


def test_counts_and_filters(capsys, url):
    assert json.loads(query(capsys, "counts", "--db", url, "--format", "json")[1]) == [
        {"label": "vacancy", "n": 2}, {"label": "adsorbate", "n": 1}]
    assert json.loads(query(capsys, "counts", "--db", url, "--format", "json", "--since", "1h")[1]) == [
        {"label": "adsorbate", "n": 1}, {"label": "vacancy", "n": 1}]
    rows = json.loads(query(capsys, "scans", "--db", url, "--format", "json", "--status", "failed")[1])
    assert [r["path"] for r in rows] == ["bad.sxm"]
    rows = json.loads(query(capsys, "scans", "--db", url, "--format", "json", "--label", "adsorbate")[1])
    assert [r["path"] for r in rows] == ["new.sxm"]
    rows = json.loads(query(capsys, "defects", "--db", url, "--format", "json", "--surface", "ge001")[1])
    assert sorted(r["label"] for r in rows) == ["adsorbate", "vacancy"]
    assert {(r["x_px"], r["y_px"]) for r in rows} == {(4.0, 3.0), (6.0, 5.0)}
    until = (NOW - dt.timedelta(hours=1)).isoformat()
    rows = json.loads(query(capsys, "scans", "--db", url, "--format", "json", "--until", until)[1])
    assert [r["path"] for r in rows] == ["old.sxm"]


def test_csv_and_table(capsys, url):
    code, out = query(capsys, "defects", "--db", url, "--format", "csv", "--label", "vacancy")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["path"] for r in rows] == ["old.sxm", "new.sxm"]
    assert float(rows[1]["x_m"]) == pytest.approx(4e-10)
    code, out = query(capsys, "scans", "--db", url)
    assert code == 0 and "old.sxm" in out and "file is empty" in out and "scans (3)" in out


def test_bad_arguments_are_errors(capsys, url):
    assert main(["query", "scans", "--db", url, "--since", "yesterday-ish"]) == 2
    assert "--since 'yesterday-ish' is neither an ISO date" in capsys.readouterr().err
    assert main(["query", "scans", "--db", url, "--until", "soon"]) == 2
    assert "--until 'soon' is neither" in capsys.readouterr().err
    assert main(["query", "scans", "--db", "nosuchdialect://x"]) == 2


def test_parse_when():
    now = dt.datetime(2026, 11, 25, 12, 0)
    assert parse_when("90m", now) == dt.datetime(2026, 11, 25, 10, 30)
    assert parse_when("1d", now) == dt.datetime(2026, 11, 24, 12, 0)
    assert parse_when("2026-11-25T11:00:00+01:00", now) == dt.datetime(2026, 11, 25, 10, 0)
    assert parse_when("2026-11-20", now) == dt.datetime(2026, 11, 20)


def test_listen_prints_what_is_published(capsys):
    import threading
    import time

    from stmwatch.daemon.publisher import OverlayPublisher

    doc = make_doc("pub.sxm", "h9", defects=[("vacancy", 3.0, 4.0)])
    doc.warnings = ["double tip: a second apex images every feature again 1.20 nm away"]
    publisher = OverlayPublisher("tcp://127.0.0.1:*")
    codes = []
    listener = threading.Thread(target=lambda: codes.append(
        main(["listen", "--endpoint", publisher.endpoint, "--count", "2", "--timeout", "20"])))
    listener.start()
    try:
        while listener.is_alive():  # a PUB drops messages until the SUB has joined: keep publishing
            publisher(doc)
            time.sleep(0.05)
    finally:
        publisher.close()
    out = capsys.readouterr().out
    assert codes == [0]
    assert out.count("pub.sxm: ok, vacancy 1") == 2
    assert "vacancy (0.400, -0.300) nm" in out  # x_m = 4e-10, y_m = -3e-10 from make_doc
    assert out.count("warning: double tip: a second apex images every feature again 1.20 nm away") == 2


def test_warnings_in_every_format(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    doc = make_doc("tip.sxm", "h9")
    doc.warnings = ["double tip: a second apex images every feature again 1.20 nm away",
                    "not the surface of [models] surface [/b]"]  # no rich markup: shown as written
    with Database(url) as db:
        db.record(doc)
    assert json.loads(query(capsys, "scans", "--db", url, "--format", "json")[1])[0]["warnings"] == doc.warnings
    [row] = list(csv.DictReader(io.StringIO(query(capsys, "scans", "--db", url, "--format", "csv")[1])))
    assert json.loads(row["warnings"]) == doc.warnings
    out = query(capsys, "scans", "--db", url)[1]
    assert "double tip" in out and "not the surface of [models] surface [/b]" in out


def test_defects_with_geometry_to_csv_and_hdf5(capsys, url, tmp_path):
    """Each defect with its scan's geometry, the same rows in CSV and HDF5; the geometry is
    make_doc's (64 x 32 px, 6.4 x 3.2 nm, offset (1, 2) nm, 10 degrees)."""
    out_csv = tmp_path / "d.csv"
    assert main(["query", "defects", "--db", url, "--geometry", "--format", "csv", "--out", str(out_csv)]) == 0
    assert "3 defects -> " in capsys.readouterr().err
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["path"], r["label"]) for r in rows] == [("old.sxm", "vacancy"), ("new.sxm", "vacancy"), ("new.sxm", "adsorbate")]
    for r in rows:
        assert (r["columns"], r["rows"], r["direction"], r["status"]) == ("64", "32", "down", "ok")
        assert (float(r["range_x_m"]), float(r["range_y_m"]), float(r["angle_deg"])) == (6.4e-9, 3.2e-9, 10.0)
        assert (float(r["offset_x_m"]), float(r["offset_y_m"])) == (1e-9, 2e-9)
    # without --geometry the columns are as before
    code, out = query(capsys, "defects", "--db", url, "--format", "csv")
    assert "range_x_m" not in out.splitlines()[0]

    h5py = pytest.importorskip("h5py")
    out_h5 = tmp_path / "d.h5"
    assert main(["query", "defects", "--db", url, "--geometry", "--format", "hdf5", "--out", str(out_h5)]) == 0
    with h5py.File(out_h5) as fh:
        g = fh["defects"]
        assert g.attrs["rows"] == 3 and set(rows[0]) == set(g)
        assert [v.decode() for v in g["label"][()]] == [r["label"] for r in rows]
        assert list(g["x_m"][()]) == [float(r["x_m"]) for r in rows] and g["x_m"].attrs["units"] == "m"
        assert list(g["columns"][()]) == [64, 64, 64] and g["y_px"].attrs["units"] == "px"
        assert g["angle_deg"].attrs["units"] == "deg"


def test_hdf5_needs_a_file_and_geometry_needs_defects(capsys, url):
    assert main(["query", "defects", "--db", url, "--format", "hdf5"]) == 2
    assert "--out FILE" in capsys.readouterr().err
    assert main(["query", "scans", "--db", url, "--geometry"]) == 2
    assert "query defects" in capsys.readouterr().err


def test_a_mistyped_sqlite_path_is_an_error_not_a_new_empty_database(capsys, tmp_path):
    typo = tmp_path / "stm_typo.db"
    assert main(["query", "scans", "--db", f"sqlite:///{typo}"]) == 2
    assert f"no database at {typo}" in capsys.readouterr().err and not typo.exists()


def test_overlay_times_say_they_are_utc(url):
    """``processed`` (naive UTC inside the daemon) is published with its offset, as ``query``
    prints it: a retargeting PC in another time zone must not read it as its own local time."""
    from stmwatch.daemon.documents import overlay_message

    doc = make_doc("t.sxm", "h7", processed=dt.datetime(2026, 11, 25, 10, 0))
    published = dt.datetime.fromisoformat(overlay_message(doc)["processed"])
    assert published == dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.timezone.utc)
    with Database(url) as db:
        db.record(doc)
        [stored] = db.scans(Filters(status="ok", since=dt.datetime(2026, 11, 25), until=dt.datetime(2026, 11, 26)))
    assert dt.datetime.fromisoformat(stored["processed"]) == published


def test_output_cut_short_by_its_reader_is_no_error(url):
    """``stmwatch query defects --format json | head``: the reader closing the pipe early ends the
    command quietly, without a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "stmwatch.daemon", "query", "defects", "--db", url, "--format",
                             "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the command writes (it starts in about a second)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err[-1500:]


def test_listen_png_says_when_overlays_come_without_pngs(tmp_path, capsys):
    """``listen --png DIR`` against a daemon with ``publish_png = false`` (the default): the folder
    stays empty, and listen says why once instead of nothing."""
    import threading

    import zmq

    from stmwatch.daemon.publisher import TOPIC

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    done = threading.Event()

    def publish():  # until listen has its message (a SUB joins late)
        while not done.wait(0.1):
            pub.send_multipart([TOPIC, json.dumps({"scan_uid": "u1", "file": "a.sxm", "status": "ok",
                                                   "n_defects": 0, "counts": {}, "defects": []}).encode()])

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        assert main(["listen", "--endpoint", f"tcp://127.0.0.1:{port}", "--json", "--count", "2",
                     "--png", str(tmp_path / "png"), "--timeout", "30"]) == 0
    finally:
        done.set()
        thread.join(5)
        pub.close(0)
        ctx.term()
    err = capsys.readouterr().err
    assert err.count("came without a PNG") == 1 and "publish_png = true" in err
    assert not list((tmp_path / "png").iterdir())
