"""Times are stored as instants (issue 16, failure 6): before, ``acquired`` was the .sxm header's
naive local time and ``processed`` naive UTC in the same table, hours apart for the same moment."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from stmwatch.daemon.db import Database
from stmwatch.daemon.pipeline import Pipeline
from stmwatch.drivers.base import Acquisition, sha256
from stmwatch.drivers.sxm import sxm_bytes
from stmwatch.models.sim.simulate import simulate_scan
from stmwatch.models.standin import standin_analyser


@pytest.fixture
def utc_plus_5(monkeypatch):
    monkeypatch.setenv("TZ", "LAB-5")  # POSIX: 5 hours east of UTC, no tz database needed
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_acquired_and_processed_are_the_same_kind_of_instant(database_url, utc_plus_5):
    scan, _ = simulate_scan("si001h", 1, pixels=(48, 48), n_defects=1)
    scan.acquired = dt.datetime(2026, 3, 1, 12, 0, 0)  # what the header says: the lab's clock
    raw = sxm_bytes(scan)
    db = Database(database_url)
    p = Pipeline(standin_analyser(), [], surface="si001h", config_version="c", store=db.record)
    doc = p.process(Acquisition(path="a.sxm", content_hash=sha256(raw), source="folder", raw=raw))
    assert doc.acquired.isoformat() == "2026-03-01T12:00:00+05:00"  # overlay JSON says which clock
    [row] = db.scans()
    assert row["acquired"] == "2026-03-01T07:00:00+00:00"
    processed = dt.datetime.fromisoformat(row["processed"])
    assert processed.utcoffset() == dt.timedelta(0)
    assert abs(processed - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
    db.close()


def test_an_aware_stream_time_is_stored_as_the_same_instant(database_url):
    db = Database(database_url)
    from stmwatch.daemon.db import ScanRow
    from sqlalchemy.orm import Session

    with Session(db.engine) as s, s.begin():
        s.add(ScanRow(uid="u", dedup_key="k", path="p", content_hash="h", source="stream", status="ok",
                      acquired=dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
                      received=dt.datetime(2026, 3, 1, 12, 31), processed=dt.datetime(2026, 3, 1, 12, 32)))
    [row] = db.scans()
    assert (row["acquired"], row["processed"]) == ("2026-03-01T12:30:00+00:00", "2026-03-01T12:32:00+00:00")
    db.close()
