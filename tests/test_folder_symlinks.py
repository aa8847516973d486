"""Symlinks out of the watched folder, and the memory of taken files (issue 16, failure 6 and proof).

Before, a symlink in the watched folder pointing anywhere (``/etc``, another user's data) was
followed and its target read and stored. Now it is left alone, with one warning, unless
``[folder] follow_symlinks = true``; a symlink to a file inside the folder is taken as any file.
"""
from __future__ import annotations

import os

import pytest

from stmwatch.drivers.folder import acquisition
from stmwatch.drivers.folder.acquisition import FileTracker
from stmwatch.drivers.folder.connection import FolderConnection
from stmwatch.drivers.folder.settings import FolderSettings
from stmwatch.drivers.sxm import sxm_bytes
from stmwatch.models.sim.simulate import simulate_scan


@pytest.fixture(scope="module")
def scan_bytes():
    scan, _ = simulate_scan("si001h", 5, pixels=(32, 24))
    return sxm_bytes(scan)


def collect(conn, timeout=3.0):
    got = []
    while (acq := conn.wait_for_acquisition(timeout)) is not None:
        got.append(os.path.basename(acq.path))
        timeout = 1.0
    return sorted(got)


@pytest.mark.parametrize("follow", [False, True])
def test_symlinks_out_of_the_folder_are_followed_only_when_allowed(tmp_path, scan_bytes, follow, caplog):
    watch, outside = tmp_path / "watch", tmp_path / "elsewhere"
    watch.mkdir()
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.sxm").write_bytes(scan_bytes)
    (outside / "sub" / "deep.sxm").write_bytes(scan_bytes)
    (watch / "own.sxm").write_bytes(scan_bytes)
    (watch / "link_out.sxm").symlink_to(outside / "secret.sxm")
    (watch / "link_in.sxm").symlink_to(watch / "own.sxm")
    (watch / "dir_out").symlink_to(outside / "sub")
    settings = FolderSettings(path=str(watch), stable_s=0.3, follow_symlinks=follow)
    with caplog.at_level("WARNING", logger="stmwatch.drivers.folder.connection"):
        with FolderConnection(settings) as conn:
            (watch / "late_out.sxm").symlink_to(outside / "secret.sxm")  # after start: a file event
            got = collect(conn)
    if follow:
        assert {"link_out.sxm", "late_out.sxm", "own.sxm", "link_in.sxm"} <= set(got)
    else:
        assert got == ["link_in.sxm", "own.sxm"]
        warned = [r.getMessage() for r in caplog.records if "outside the watched folder" in r.getMessage()]
        assert any("link_out.sxm" in w for w in warned) and any("late_out.sxm" in w for w in warned)
        assert len(warned) == len(set(warned))  # once per path


def test_the_taken_files_memory_is_bounded(tmp_path, scan_bytes, monkeypatch):
    monkeypatch.setattr(acquisition, "MAX_TAKEN", 5)
    tracker = FileTracker(stable_s=0.1)
    for i in range(20):
        path = tmp_path / f"s{i}.sxm"
        path.write_bytes(scan_bytes)
        tracker.touch(path)
        [(ready, complete)] = tracker.ready()
        assert tracker.take(ready, complete) is not None
    assert len(tracker._taken) == 5 and tracker.pending == 0
    assert list(tracker._taken) == [str(tmp_path / f"s{i}.sxm") for i in range(15, 20)]
