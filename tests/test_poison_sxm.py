"""A poison ``.sxm``: a small file whose header declares a huge scan (issue 16, failure 1).

The reader allocates what the header declares, so a 1 MB file claiming 16384 x 16384 pixels
(within MAX_PIXELS) used to take gigabytes when read as a truncated file, and crashed the daemon
before anything was recorded. Now memory is bounded by what the file holds, and the file ends up
in the database as failed with the reason.
"""
from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

from stmwatch.daemon.db import Database
from stmwatch.daemon.pipeline import Pipeline
from stmwatch.drivers.folder.acquisition import FileTracker
from stmwatch.drivers.sxm import MIN_TRUNCATED_COVERAGE, ScanReadError, read_sxm_bytes, sxm_bytes
from stmwatch.models.analyse import Analyser
from stmwatch.models.sim.simulate import simulate_scan

from .conftest import REAL


def poison(pixels: int, size: int = 1 << 20) -> bytes:
    """A real file's header claiming ``pixels`` x ``pixels``, followed by ``size`` bytes in all."""
    raw = (REAL / "stm_A250320.sxm").read_bytes()
    raw = re.sub(rb":SCAN_PIXELS:\s*\n\s*\d+\s+\d+", b":SCAN_PIXELS:\n       %d       %d" % (pixels, pixels), raw)
    return raw[:size] + b"\0" * max(0, size - len(raw))


@pytest.mark.parametrize("pixels", [4096, 16384])
def test_poison_file_is_refused_without_allocating_what_it_declares(pixels):
    raw = poison(pixels)
    tracemalloc.start()
    try:
        with pytest.raises(ScanReadError) as info:
            read_sxm_bytes(raw, "poison.sxm", allow_truncated=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "poison.sxm" in str(info.value) and "truncated" in str(info.value)
    assert peak < 8 * len(raw), f"reading a {len(raw)} byte file allocated {peak} bytes"


def test_a_file_cut_short_but_covering_enough_is_still_a_partial_scan():
    scan, _ = simulate_scan("si001h", 3, pixels=(64, 64), n_defects=2)
    raw = sxm_bytes(scan)
    n_frames = sum(len(c.directions) for c in scan.channels)
    data_start = len(raw) - n_frames * 64 * 64 * 4
    keep = data_start + int(n_frames * 64 * 64 * 4 * MIN_TRUNCATED_COVERAGE) + 64 * 4 * 10  # a few rows more
    partial = read_sxm_bytes(raw[:keep], "cut.sxm", allow_truncated=True)
    assert partial.partial
    np.testing.assert_array_equal(partial.channels[0].frames()[0][np.isfinite(partial.channels[0].frames()[0])],
                                  scan.channels[0].frames()[0][np.isfinite(partial.channels[0].frames()[0])])


class _NoDefects:
    name, version = "none", "0"

    def segment(self, scan):
        return []


def test_poison_file_taken_by_the_folder_driver_is_recorded_failed_once(tmp_path):
    """Stable but short (what the folder driver does with it) → failed in the database, with the
    reason; a restart sees it as known and does not read it again."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "poison.sxm"
    path.write_bytes(poison(16384))
    clock = [0.0]
    tracker = FileTracker(stable_s=1.0, clock=lambda: clock[0])
    tracker.touch(path)
    assert tracker.ready() == []  # short of what its header implies: not complete
    clock[0] = 2.0
    [(ready, complete)] = tracker.ready()
    assert not complete
    acq = tracker.take(ready, complete)
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    p = Pipeline(Analyser(_NoDefects()), [db.record], surface="si001h", config_version="c", is_known=db.seen)
    doc = p.process(acq)
    assert doc.status == "failed" and "truncated" in doc.error
    [row] = db.scans()
    assert row["status"] == "failed" and row["path"] == str(path) and "refused" in row["error"]
    assert p.process(acq) is None  # known: skipped after a restart
    db.close()


def test_a_header_listing_thousands_of_channels_is_refused_before_parsing_them():
    raw = (REAL / "stm_A250320.sxm").read_bytes()
    m = re.search(rb"(:DATA_INFO:\r?\n[^\n]*\n)([^\n]*\n)", raw)
    flood = raw[:m.end(1)] + m.group(2) * 20000 + raw[m.end(1):]
    with pytest.raises(ScanReadError, match="more than 256 channels"):
        read_sxm_bytes(flood, "flood.sxm", allow_truncated=True)
