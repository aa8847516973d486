"""scripts/killtest.py, short: kill -9 at three points of a backlog (start-up, just after a commit,
random), restart; every scan stored exactly once, PRAGMA integrity_check ok. The full run (24
kills) and its figures are in docs/reliability.md."""
from __future__ import annotations

import sys

from .conftest import REPO


def test_kill_9_at_three_points_of_a_backlog_loses_and_duplicates_nothing(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import killtest
    finally:
        sys.path.pop(0)
    summary = killtest.killtest(kills=3, scans=8, live_scans=2, seed=5, workdir=tmp_path)
    assert summary["kills"] == 3 and summary["rows"] == summary["scans_written"] == 10
    assert summary["missing"] == summary["duplicates"] == summary["unexpected"] == summary["not_ok"] == []
    assert summary["integrity_check"] == "ok" and summary["defects_mismatch"] == 0
    assert killtest.passed(summary), summary
