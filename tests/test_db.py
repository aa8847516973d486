"""The defect database: recording, idempotent ingest, schema version, WAL, queries."""
from __future__ import annotations

import datetime as dt
import sqlite3

import pytest
from sqlalchemy import text

from stmwatch.daemon.db import SCHEMA_VERSION, Database, DatabaseError, Filters
from stmwatch.daemon.documents import ResultDocument, new_uid


def make_doc(path="a.sxm", content_hash="h1", status="ok", defects=(), surface="si001h", error=None,
             processed=dt.datetime(2026, 11, 25, 10, 0)) -> ResultDocument:
    defects = [{"x_px": c, "y_px": r, "x_m": c * 1e-10, "y_m": -r * 1e-10, "label": label, "score": 0.9,
                "area_px": 12.0} for label, r, c in defects]
    counts: dict[str, int] = {}
    for d in defects:
        counts[d["label"]] = counts.get(d["label"], 0) + 1
    return ResultDocument(
        uid=new_uid(), path=path, content_hash=content_hash, source="folder", status=status, error=error,
        surface=surface, geometry=None if status == "failed" else {
            "pixels": [64, 32], "range_m": [6.4e-9, 3.2e-9], "offset_m": [1e-9, 2e-9], "angle_deg": 10.0,
            "direction": "down"},
        acquired=None, received=processed, processed=processed, defects=defects, counts=counts,
        timing_ms={"total": 5.0}, model_versions={"segmenter": "x@1"}, config_version="cfg1")


@pytest.fixture
def db(database_url):
    """The database under test: SQLite, and a real PostgreSQL server (conftest.database_url)."""
    with Database(database_url) as database:
        yield database


def test_record_and_read_back(db):
    doc = make_doc(defects=[("vacancy", 3.0, 4.0), ("dangling_bond", 10.5, 20.25)])
    scan_id = db.record(doc)
    [scan] = db.scans()
    assert scan["id"] == scan_id and scan["path"] == "a.sxm" and scan["status"] == "ok"
    assert scan["n_defects"] == 2 and scan["columns"] == 64 and scan["rows"] == 32
    assert scan["offset_x_m"] == 1e-9 and scan["angle_deg"] == 10.0
    assert scan["model_versions"] == {"segmenter": "x@1"} and scan["config_version"] == "cfg1"
    defects = db.defects()
    assert [(d["label"], d["x_px"], d["y_px"], d["scan_id"]) for d in defects] == [
        ("vacancy", 4.0, 3.0, scan_id), ("dangling_bond", 20.25, 10.5, scan_id)]
    assert defects[1]["x_m"] == pytest.approx(20.25e-10) and defects[1]["path"] == "a.sxm"


def test_ingest_is_idempotent_by_content_hash(db):
    assert db.record(make_doc(defects=[("vacancy", 1, 1)])) is not None
    assert db.seen("a.sxm", "h1") and db.seen("copy/elsewhere.sxm", "h1")
    assert db.record(make_doc(path="copy.sxm", defects=[("vacancy", 1, 1)])) is None
    assert len(db.scans()) == 1 and len(db.defects()) == 1


def test_a_failed_file_is_keyed_by_path_and_content(db):
    db.record(make_doc(path="bad.sxm", content_hash="e0", status="failed", error="bad.sxm: file is empty"))
    assert db.seen("bad.sxm", "e0")
    assert not db.seen("other.sxm", "e0")  # the same bytes at another path are recorded again
    assert db.record(make_doc(path="other.sxm", content_hash="e0", status="failed", error="x")) is not None
    assert db.record(make_doc(path="bad.sxm", content_hash="e0", status="failed", error="x")) is None
    assert not db.seen("bad.sxm", "fixed")  # a fixed file (new content) is processed
    [failed, _] = db.scans(Filters(status="failed"))
    assert failed["error"] == "bad.sxm: file is empty" and failed["n_defects"] == 0


def test_queries_filter_by_time_label_surface_status(db):
    t = dt.datetime(2026, 11, 25, 9, 0)
    db.record(make_doc("1.sxm", "h1", defects=[("vacancy", 1, 1), ("vacancy", 2, 2)], processed=t))
    db.record(make_doc("2.sxm", "h2", defects=[("adsorbate", 1, 1)], surface="ge001",
                       processed=t + dt.timedelta(hours=1)))
    db.record(make_doc("3.sxm", "h3", status="partial", defects=[("vacancy", 5, 5)],
                       processed=t + dt.timedelta(hours=2)))
    db.record(make_doc("4.sxm", "h4", status="failed", error="broken", processed=t + dt.timedelta(hours=3)))
    paths = lambda rows: [r["path"] for r in rows]  # noqa: E731
    assert paths(db.scans()) == ["1.sxm", "2.sxm", "3.sxm", "4.sxm"]
    assert paths(db.scans(Filters(since=t + dt.timedelta(minutes=30)))) == ["2.sxm", "3.sxm", "4.sxm"]
    assert paths(db.scans(Filters(until=t + dt.timedelta(hours=1)))) == ["1.sxm"]
    assert paths(db.scans(Filters(label="vacancy"))) == ["1.sxm", "3.sxm"]
    assert paths(db.scans(Filters(surface="ge001"))) == ["2.sxm"]
    assert paths(db.scans(Filters(status="partial"))) == ["3.sxm"]
    assert db.counts() == [{"label": "vacancy", "n": 3}, {"label": "adsorbate", "n": 1}]
    assert db.counts(Filters(status="ok")) == [{"label": "vacancy", "n": 2}, {"label": "adsorbate", "n": 1}]
    assert db.counts(Filters(surface="ge001")) == [{"label": "adsorbate", "n": 1}]
    assert [d["path"] for d in db.defects(Filters(label="vacancy", since=t + dt.timedelta(hours=1)))] == ["3.sxm"]
    assert db.summary() == {"ok": 2, "partial": 1, "failed": 1, "defects": 4}


def test_sqlite_file_is_in_wal_mode_with_a_schema_version(tmp_path):
    path = tmp_path / "w.db"
    Database(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    indexed = {row[2] for row in con.execute("SELECT * FROM sqlite_master WHERE type='index'").fetchall()}
    assert {"scans", "defects"} <= indexed
    con.close()


def test_upgrade_from_an_older_version_and_refuse_a_newer_one(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'u.db'}"
    with Database(url) as db:
        db.record(make_doc())
        with db.engine.begin() as con:
            con.execute(text("UPDATE meta SET value='0' WHERE key='schema_version'"))
    ran = []
    monkeypatch.setitem(__import__("stmwatch.daemon.db", fromlist=["MIGRATIONS"]).MIGRATIONS, SCHEMA_VERSION,
                        ["CREATE TABLE migrated (x INTEGER)"])
    with Database(url) as db:
        assert db.schema_version() == SCHEMA_VERSION
        with db.engine.connect() as con:
            ran = con.execute(text("SELECT name FROM sqlite_master WHERE name='migrated'")).all()
        assert len(db.scans()) == 1  # data kept
    assert ran
    with Database(url) as db, db.engine.begin() as con:
        con.execute(text(f"UPDATE meta SET value='{SCHEMA_VERSION + 1}' WHERE key='schema_version'"))
    with pytest.raises(DatabaseError, match="newer"):
        Database(url)


def test_bad_url_is_a_clear_error():
    with pytest.raises(DatabaseError, match="cannot open database"):
        Database("nosuchdialect://x")


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="SQLite before 3.35 cannot drop a column")
def test_a_schema_1_database_gains_the_warnings_column_and_keeps_its_scans(tmp_path):
    """Schema 2 added ``scans.warnings``: a database written before it (the column absent, schema
    1) is upgraded on open, its old scans read with no warnings, new scans keep theirs."""
    path = tmp_path / "v1.db"
    with Database(f"sqlite:///{path}") as db:
        db.record(make_doc(content_hash="old"))
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE scans DROP COLUMN warnings")
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    with Database(f"sqlite:///{path}") as db:
        assert db.schema_version() == SCHEMA_VERSION == 2
        doc = make_doc(path="b.sxm", content_hash="new")
        doc.warnings = ["double tip: a second apex images every feature again 1.20 nm away"]
        db.record(doc)
        old, new = db.scans()
        assert old["path"] == "a.sxm" and old["warnings"] == []  # filled in by the migration
        assert new["warnings"] == doc.warnings
    # an upgrade interrupted after the column was added (or run twice at once) is finished, not failed
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    with Database(f"sqlite:///{path}") as db:
        assert db.schema_version() == 2 and len(db.scans()) == 2


def test_text_too_long_for_its_column_is_stored_cut(db):
    """PostgreSQL refuses text longer than its column (a stream's scan_id becomes the path, a
    label is what the operator named it); before, such a scan was retried for ever and held back
    every scan after it."""
    path = "stream:" + "x" * 3000
    doc = make_doc(path=path, defects=[("a" * 100, 1.0, 2.0)])
    assert db.record(doc) is not None
    [scan] = db.scans()
    assert len(scan["path"]) == 1024 and scan["path"].startswith("stream:xxx") and scan["path"].endswith("…")
    assert [d["label"] for d in db.defects()] == ["a" * 63 + "…"]
    failed = make_doc(path=path, content_hash="h2", status="failed", error="bad")
    assert db.record(failed) is not None and db.seen(path, "h2") and not db.seen(path + "y", "h2")
    assert db.record(make_doc(path=path, content_hash="h2", status="failed", error="bad")) is None
