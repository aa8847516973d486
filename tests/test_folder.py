"""The watched-folder driver: completeness, exactly-once taking, backlog order, polling."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from stmwatch.drivers.folder.acquisition import FileTracker, existing_files, matches
from stmwatch.drivers.folder.connection import FolderConnection
from stmwatch.drivers.folder.settings import FolderSettings
from stmwatch.drivers.folder.sim import write_slowly
from stmwatch.drivers.sxm import sxm_bytes, write_sxm
from stmwatch.models.sim.simulate import simulate_scan


@pytest.fixture(scope="module")
def scan_bytes() -> bytes:
    scan, _ = simulate_scan("si001h", 1, pixels=(32, 24))
    return sxm_bytes(scan)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_temporary_and_unmatched_names_are_never_candidates():
    assert matches("/d/scan_001.sxm", ["*.sxm"])
    assert matches("/d/sub/x.SXM", ["*.sxm", "*.SXM"])
    for name in (".scan.sxm", ".scan.sxm.part", "scan.sxm.part", "scan.sxm~", "scan.sxm.tmp", "scan.dat"):
        assert not matches(f"/d/{name}", ["*.sxm"]), name


def test_tracker_takes_a_file_when_its_header_size_is_reached_and_only_once(tmp_path, scan_bytes):
    clock = Clock()
    tracker = FileTracker(stable_s=5.0, clock=clock)
    path = tmp_path / "a.sxm"
    path.write_bytes(scan_bytes[: len(scan_bytes) // 2])
    tracker.touch(path)
    assert tracker.ready() == []  # half written, not stable yet
    clock.t += 4.9
    assert tracker.ready() == []
    path.write_bytes(scan_bytes)  # the writer finished
    assert tracker.ready() == [(str(path), True)]
    acq = tracker.take(str(path), True)
    assert acq.raw == scan_bytes and acq.complete and len(acq.content_hash) == 64
    tracker.touch(path)  # e.g. the close event after the last write
    assert tracker.ready() == [] and tracker.pending == 0
    clock.t += 100
    assert tracker.ready() == []  # never taken twice


def test_a_copy_that_sets_the_full_size_first_is_taken_once_its_data_are_written(tmp_path, scan_bytes):
    """A copy onto a share from Windows sets the file's full size first and fills it in afterwards:
    the size matches the header while the data are still zero bytes. It is taken once its data end
    is written, or, should the copy stall, after stable_s like any file."""
    from stmwatch.drivers.sxm import expected_size

    clock = Clock()
    tracker = FileTracker(stable_s=5.0, clock=clock)
    path = tmp_path / "copied.sxm"
    header_end = scan_bytes.index(b"\x1a\x04") + 2
    path.write_bytes(scan_bytes[:header_end] + bytes(len(scan_bytes) - header_end))  # allocated, header copied
    tracker.touch(path)
    assert expected_size(path) == len(scan_bytes) and tracker.ready() == []
    clock.t += 1.0
    path.write_bytes(scan_bytes[:len(scan_bytes) // 2] + bytes(len(scan_bytes) - len(scan_bytes) // 2))
    assert tracker.ready() == []  # half copied: still zeros at the end
    path.write_bytes(scan_bytes)  # the copy finished
    assert tracker.ready() == [(str(path), True)]
    assert tracker.take(str(path), True).raw == scan_bytes
    stalled = tmp_path / "stalled.sxm"
    stalled.write_bytes(scan_bytes[:header_end] + bytes(len(scan_bytes) - header_end))
    tracker.touch(stalled)
    assert tracker.ready() == []
    clock.t += 5.5
    assert tracker.ready() == [(str(stalled), True)]  # stable at its full size: taken, the reader judges it


def test_tracker_takes_a_stable_short_file_as_it_is_and_again_when_it_changes(tmp_path, scan_bytes):
    clock = Clock()
    tracker = FileTracker(stable_s=5.0, clock=clock)
    path = tmp_path / "b.sxm"
    short = scan_bytes[: len(scan_bytes) - 32 * 4 * 5]  # the last 5 rows of the last frame missing
    path.write_bytes(short)
    tracker.touch(path)
    assert tracker.ready() == []
    clock.t += 2.0
    path.write_bytes(short[:-4])  # still growing? (size changed: the clock restarts)
    assert tracker.ready() == []
    clock.t += 4.0
    assert tracker.ready() == []
    clock.t += 1.5
    assert tracker.ready() == [(str(path), False)]
    acq = tracker.take(str(path), False)
    scan = acq.read()  # read with the missing values NaN, not rejected
    last = scan.channels[-1].frames()[-1]  # stored last: its bottom rows (scan 'down') are missing
    assert np.isnan(last[-5:]).all() and not np.isnan(last[:-6]).any()
    assert not np.isnan(scan.channels[0].forward).any()
    path.write_bytes(scan_bytes)  # fixed later: new content, taken again
    tracker.touch(path)
    assert tracker.ready() == [(str(path), True)]


def test_backlog_lists_matching_files_oldest_first(tmp_path, scan_bytes):
    (tmp_path / "sub").mkdir()
    names = ["z.sxm", "sub/a.sxm", "m.sxm"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(scan_bytes)
        os.utime(tmp_path / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.sxm").write_bytes(scan_bytes)
    assert existing_files(tmp_path, ["*.sxm"], True) == [tmp_path / n for n in names]
    assert existing_files(tmp_path, ["*.sxm"], False) == [tmp_path / "z.sxm", tmp_path / "m.sxm"]


def _collect(conn, n, timeout=10.0):
    got = []
    while len(got) < n:
        acq = conn.wait_for_acquisition(timeout)
        if acq is None:
            break
        got.append(acq)
    return got


@pytest.mark.parametrize("polling", [False, True])
def test_connection_backlog_then_live_files_each_exactly_once(tmp_path, scan_bytes, polling):
    old = [tmp_path / "old_2.sxm", tmp_path / "old_1.sxm"]
    for i, p in enumerate(old):
        p.write_bytes(scan_bytes)
        os.utime(p, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    settings = FolderSettings(path=str(tmp_path), polling=polling, poll_interval_s=0.1, stable_s=30.0)
    with FolderConnection(settings) as conn:
        backlog = _collect(conn, 2)
        assert [a.path for a in backlog] == [str(p) for p in old]
        # a file written slowly in place, one written atomically via a hidden temporary name
        (tmp_path / "deep").mkdir()
        slow = tmp_path / "deep" / "slow.sxm"
        writer = threading.Thread(target=write_slowly, args=(slow, scan_bytes, 5, 0.15))
        writer.start()
        scan, _ = simulate_scan("si001h", 2, pixels=(32, 24))
        write_sxm(scan, tmp_path / "atomic.sxm")
        got = _collect(conn, 2)
        writer.join()
        assert sorted(a.path for a in got) == sorted([str(slow), str(tmp_path / "atomic.sxm")])
        by_path = {a.path: a for a in got}
        assert by_path[str(slow)].raw == scan_bytes and by_path[str(slow)].complete
        assert by_path[str(tmp_path / "atomic.sxm")].read().pixels == (32, 24)
        assert conn.wait_for_acquisition(0.5) is None  # nothing is taken twice
        assert conn.wait_for_acquisition(0.0) is None


def test_connection_takes_a_stable_truncated_file_as_partial(tmp_path, scan_bytes):
    settings = FolderSettings(path=str(tmp_path), stable_s=0.3)
    with FolderConnection(settings) as conn:
        (tmp_path / "cut.sxm").write_bytes(scan_bytes[: len(scan_bytes) * 3 // 4])
        acq = conn.wait_for_acquisition(5.0)
    assert acq is not None and not acq.complete
    assert acq.read().partial


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with FolderConnection(FolderSettings(path=str(tmp_path / "nope"))):
            pass


@pytest.mark.parametrize("polling", [False, True])
def test_a_folder_made_again_is_an_error_and_watched_afresh(tmp_path, scan_bytes, polling):
    """A share unmounted and mounted again (here: the folder deleted and made again) is not
    watched any more by the old observer: the driver says so instead of silently seeing nothing,
    and a driver opened again takes the scan written meanwhile."""
    import shutil

    root = tmp_path / "w"
    root.mkdir()
    settings = FolderSettings(path=str(root), polling=polling, poll_interval_s=0.1, stable_s=30.0)
    with FolderConnection(settings) as conn:
        (root / "a.sxm").write_bytes(scan_bytes)
        assert conn.wait_for_acquisition(5.0).path == str(root / "a.sxm")
        shutil.rmtree(root)
        root.mkdir()
        (root / "b.sxm").write_bytes(scan_bytes)
        with pytest.raises(FileNotFoundError, match="disappeared or was replaced"):
            conn.wait_for_acquisition(2.0)
    with FolderConnection(settings) as conn:  # what the daemon does after the error
        assert conn.wait_for_acquisition(5.0).path == str(root / "b.sxm")
