"""Deciding when a file in the watched folder is complete, and taking it exactly once.

A microscope writes a scan file over seconds (or a copy over a network share lands in pieces), so
a file event only makes a path a *candidate*. :class:`FileTracker` takes a candidate when

* its size is the size its header implies (:func:`stmwatch.drivers.sxm.expected_size`) and the
  end of its data is written (a copy that sets the full size first, as Windows does over a share,
  reads as zero bytes there until the data arrive: :func:`data_end_unwritten`), or
* its size has not changed for ``stable_s`` seconds (then it is taken as it is; the reader
  decides whether it is a partial scan or a broken file),

and never takes the same (size, mtime) of a path twice: a file is read again only when its content
changes. What was taken is remembered for the last :data:`MAX_TAKEN` paths (memory stays bounded
over a long run; an older file touched again is read and then skipped by the database as known). Temporary names (hidden files, ``*.part``, ``*.tmp``, ``*~``) are never candidates.
"""
from __future__ import annotations

import collections
import dataclasses
import fnmatch
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from stmwatch.drivers.base import Acquisition, sha256
from stmwatch.drivers.sxm import expected_size

log = logging.getLogger(__name__)

UNWRITTEN_TAIL_BYTES = 256  # the last bytes of a file's data that, all zero, mean not yet written


def data_end_unwritten(path: str, data_end: int) -> bool:
    """Whether the last :data:`UNWRITTEN_TAIL_BYTES` before byte ``data_end`` of ``path`` are all
    zero: space a copy allocated and has not written yet. A scan's data are big-endian float32;
    64 values of exactly 0.0 at its end do not occur in a scan (lines never acquired are NaN)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, data_end - UNWRITTEN_TAIL_BYTES))
            tail = fh.read(min(UNWRITTEN_TAIL_BYTES, data_end))
    except OSError:
        return False  # take it: reading it will say what is wrong
    return bool(tail) and not any(tail)

MAX_TAKEN = 10_000  # paths whose taken (size, mtime) is remembered
TEMPORARY_SUFFIXES = (".part", ".tmp", ".partial", "~", ".crdownload")


def is_temporary(name: str) -> bool:
    return name.startswith(".") or name.startswith("~$") or name.endswith(TEMPORARY_SUFFIXES)


def matches(path: str | os.PathLike, patterns: list[str]) -> bool:
    """True when the file name matches one of the glob ``patterns`` and is not a temporary file."""
    name = os.path.basename(os.fspath(path))
    return not is_temporary(name) and any(fnmatch.fnmatch(name, p) for p in patterns)


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` with every symlink resolved lies under ``root`` (resolved too)."""
    real_root = os.path.realpath(root)
    return os.path.realpath(path).startswith(real_root.rstrip(os.sep) + os.sep)


def existing_files(root: Path, patterns: list[str], recursive: bool) -> list[Path]:
    """Files already under ``root`` matching ``patterns``, oldest first (mtime, then path)."""
    walk = root.rglob("*") if recursive else root.glob("*")
    found = []
    for p in walk:
        try:
            if p.is_file() and matches(p, patterns):
                found.append((p.stat().st_mtime_ns, str(p), p))
        except OSError:
            continue
    return [p for _, _, p in sorted(found)]


@dataclasses.dataclass
class _Candidate:
    order: int
    size: int = -1
    mtime_ns: int = -1
    since: float = 0.0  # clock time when the size last changed
    expected: int | None = None  # size its header implies, once the header is complete


class FileTracker:
    """Candidates → files ready to be read; thread-safe (events arrive on the observer's thread).

    ``stable_s`` seconds of unchanged size make a short file ready; ``clock`` is in seconds.
    """

    def __init__(self, stable_s: float, clock: Callable[[], float] = time.monotonic,
                 accept: Callable[[str], bool] | None = None):
        self.stable_s = stable_s
        self.clock = clock
        self.accept = accept  # checked again just before reading (a path may be replaced by a symlink)
        self._lock = threading.Lock()
        self._candidates: dict[str, _Candidate] = {}
        # path -> (size, mtime_ns) when taken, the last MAX_TAKEN paths
        self._taken: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self._counter = itertools.count()

    def touch(self, path: str | os.PathLike) -> None:
        """Make ``path`` a candidate (a file event, or the backlog on start)."""
        key = os.fspath(path)
        with self._lock:
            if key not in self._candidates:
                self._candidates[key] = _Candidate(order=next(self._counter), since=self.clock())

    def forget(self, path: str | os.PathLike) -> None:
        with self._lock:
            self._candidates.pop(os.fspath(path), None)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._candidates)

    def ready(self) -> list[tuple[str, bool]]:
        """``(path, complete)`` of candidates ready now, in the order they became candidates."""
        now = self.clock()
        out = []
        with self._lock:
            items = sorted(self._candidates.items(), key=lambda kv: kv[1].order)
        for path, cand in items:
            try:
                st = os.stat(path)
            except OSError:
                self.forget(path)  # deleted or renamed away; a rename's destination has its own event
                continue
            state = (st.st_size, st.st_mtime_ns)
            if self._taken.get(path) == state:
                self.forget(path)  # an event for content already taken (e.g. a close after write)
                continue
            if (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns):
                if st.st_size < cand.size:
                    cand.expected = None  # rewritten from the start: read its header again
                cand.size, cand.mtime_ns, cand.since = st.st_size, st.st_mtime_ns, now
            if cand.expected is None and st.st_size > 0:
                cand.expected = expected_size(path)  # the header is read until it is complete
            expected = cand.expected
            full = expected is not None and st.st_size >= expected
            if full and not data_end_unwritten(path, expected):
                out.append((path, True))
            elif now - cand.since >= self.stable_s:
                out.append((path, full))
        return out

    def take(self, path: str, complete: bool, source: str = "folder") -> Acquisition | None:
        """Read ``path`` and mark that content taken; None if it changed while being read."""
        if self.accept is not None and not self.accept(path):
            self.forget(path)
            return None
        try:
            before = os.stat(path)
            raw = Path(path).read_bytes()
            after = os.stat(path)
        except OSError as exc:
            log.warning("%s: cannot read (%s); will retry on its next change", path, exc)
            self.forget(path)
            return None
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(raw) != after.st_size:
            return None  # still being written: stays a candidate
        with self._lock:
            self._taken[path] = (after.st_size, after.st_mtime_ns)
            self._taken.move_to_end(path)
            while len(self._taken) > MAX_TAKEN:
                self._taken.popitem(last=False)
            self._candidates.pop(path, None)
        if not complete:
            log.info("%s: size %d stable for %.1f s but not what its header implies; taking it as it is",
                     path, len(raw), self.stable_s)
        return Acquisition(path=path, content_hash=sha256(raw), source=source, raw=raw, complete=complete)
