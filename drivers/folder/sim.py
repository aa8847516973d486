"""A simulated microscope writing ``.sxm`` files into a folder, as Nanonis does, for tests and the demo.

Files are written in place, in chunks with pauses (as a slow acquisition PC or a network copy
does), or all at once; bad files can be mixed in. The scans come from a *scan source* the caller
gives -- ``make_scan(index, **overrides) -> (Scan, truth)``, e.g. the STM simulator's
``scan_source`` (``models/sim/``) -- and the simulator keeps their truth.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from stmwatch.drivers.scan import Scan
from stmwatch.drivers.sxm import sxm_bytes

ScanSource = Callable[..., tuple[Scan, Any]]  # (index, **overrides) -> (scan, truth)

log = logging.getLogger(__name__)


def write_slowly(path: str | os.PathLike, data: bytes, chunks: int = 1, pause_s: float = 0.0,
                 stop: threading.Event | None = None) -> Path:
    """Write ``data`` to ``path`` in place in ``chunks`` pieces with ``pause_s`` seconds between them."""
    path = Path(path)
    step = max(1, -(-len(data) // max(1, chunks)))
    with open(path, "wb") as fh:
        for i in range(0, max(len(data), 1), step):
            fh.write(data[i:i + step])
            fh.flush()
            os.fsync(fh.fileno())
            if i + step < len(data) and pause_s > 0:
                if stop is not None and stop.wait(pause_s):
                    break
                if stop is None:
                    time.sleep(pause_s)
    return path


@dataclasses.dataclass
class Written:
    """One file the simulator wrote: its path, and the truth (None for a bad file)."""

    path: Path
    scan: Any = None
    truth: Any = None
    bad: bool = False


class FolderSimulator:
    """Writes the scans of ``make_scan`` into ``folder``; ``written`` lists what it wrote."""

    def __init__(self, folder: str | os.PathLike, make_scan: ScanSource, prefix: str = "sim"):
        self.folder = Path(folder)
        self.make_scan = make_scan
        self.prefix = prefix
        self.written: list[Written] = []
        self._count = 0

    def make(self, index: int | None = None, **overrides) -> tuple[Scan, Any]:
        """``(scan, truth)`` of the next (or ``index``-th) scan; ``overrides`` go to the scan source
        for this scan only."""
        return self.make_scan(self._count if index is None else index, **overrides)

    def write_scan(self, chunks: int = 1, pause_s: float = 0.0, name: str | None = None,
                   stop: threading.Event | None = None, **overrides) -> Written:
        """Simulate one scan and write it (in ``chunks`` pieces ``pause_s`` apart)."""
        scan, truth = self.make(**overrides)
        name = name or f"{self.prefix}_{self._count:04d}.sxm"
        self._count += 1
        path = self.folder / name
        scan.source = path
        write_slowly(path, sxm_bytes(scan), chunks, pause_s, stop)
        w = Written(path, scan, truth)
        self.written.append(w)
        return w

    def write_bad(self, name: str, content: bytes) -> Written:
        """Write a broken file (e.g. one of ``shared/data/bad``) all at once."""
        path = write_slowly(self.folder / name, content)
        w = Written(path, bad=True)
        self.written.append(w)
        return w

    def run(self, n: int, interval_s: float, chunks: int = 4, stop: threading.Event | None = None) -> None:
        """Write ``n`` scans, one every ``interval_s`` s, each in ``chunks`` pieces over that time
        (as a microscope writing a scan line by line); stops early when ``stop`` is set."""
        for _ in range(n):
            if stop is not None and stop.is_set():
                return
            self.write_scan(chunks=chunks, pause_s=interval_s / max(chunks, 1), stop=stop)
