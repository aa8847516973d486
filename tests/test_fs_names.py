"""File names that are not UTF-8 (issue 16, failure 4).

A name like ``scan_\\xff\\xfe.sxm`` (Windows shares) reaches Python with surrogate escapes; the
database lookup raised UnicodeEncodeError, so the scan was never stored nor marked failed, and the
error came back on every restart. Now it is stored losslessly and found again on restart.
"""
from __future__ import annotations

import os

import pytest

from stmwatch.daemon.daemon import Daemon
from stmwatch.daemon.db import path_from_text, path_text
from stmwatch.drivers.sxm import write_sxm
from stmwatch.models.sim.simulate import simulate_scan
from stmwatch.models.standin import standin_analyser

from .test_db_faults import config_for

NAMES = [b"scan_\xff\xfe.sxm", b"bad_\xff\xfe.sxm", "ok_é.sxm".encode(), b"fsbytes:odd.sxm"]


@pytest.mark.parametrize("name", NAMES + [b"/data/%41\\x41 %zz.sxm"])
def test_path_text_round_trips_every_name(name):
    path = os.fsdecode(name)
    text = path_text(path)
    text.encode("utf-8")  # storable
    assert os.fsencode(path_from_text(text)) == name


def test_non_utf8_names_are_stored_once_good_and_bad(tmp_path, database_url):
    config = config_for(tmp_path, database_url)
    folder = tmp_path / "scans"
    scan, _ = simulate_scan("si001h", 1, pixels=(48, 48), n_defects=2)
    write_sxm(scan, os.fsdecode(os.fsencode(folder) + b"/scan_\xff\xfe.sxm"))
    with open(os.fsencode(folder) + b"/bad_\xff\xfe.sxm", "wb") as fh:
        fh.write(b"not an sxm file")
    for attempt in range(2):  # the second start finds both already stored
        with Daemon(config, analyser=standin_analyser()) as daemon:
            assert daemon.wait_until_idle(60)
            stats = daemon.pipeline.stats
            rows = daemon.db.scans()
        if attempt == 0:
            assert (stats.ok + stats.partial, stats.failed) == (1, 1)
        else:
            assert stats.skipped == 2
    names = sorted(os.fsencode(path_from_text(r["path"])).rsplit(b"/", 1)[1] for r in rows)
    assert names == [b"bad_\xff\xfe.sxm", b"scan_\xff\xfe.sxm"]
    [bad] = [r for r in rows if r["status"] == "failed"]
    assert "not a Nanonis" in bad["error"] and "bad_\\xff\\xfe.sxm" in bad["error"]
