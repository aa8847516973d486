"""Turning what a Nanonis controller reports into events: finished frames and new lines.

The programming interface has no line events: :class:`FrameTracker` is told what each poll saw
(a frame ended, the number of lines acquired so far) and decides which event that makes, free of
sockets, so the connection (:mod:`.connection`) only talks to the controller.
"""
from __future__ import annotations

import logging

from stmwatch.drivers.base import Acquisition, PartialScan, content_hash, scan_geometry
from stmwatch.drivers.scan import Scan

log = logging.getLogger(__name__)


class FrameTracker:
    """The state of the running frame between polls: whether a scan runs, how many of its lines
    were already reported, and the id the running frame's :class:`PartialScan` events carry."""

    def __init__(self) -> None:
        self.running = False  # the last status poll said a scan was running
        self.rows = 0  # lines of the running frame already reported
        self._scan_no = 0
        self._scan_id = ""
        self.last: Scan | None = None  # the running frame as last grabbed for progress

    def finished(self, scan: Scan) -> Acquisition:
        """The :class:`Acquisition` of a frame that ended (``scan.partial`` when stopped early)."""
        self.running, self.rows, self.last = False, 0, None
        scan_id = self._scan_id or scan.name
        self._scan_id = ""
        return Acquisition(path=f"nanonis:{scan.header.get('NANONIS_FILE') or scan_id}",
                           content_hash=content_hash(scan_geometry(scan), scan),
                           source="nanonis", scan=scan, complete=not scan.partial)

    def status(self, running: bool) -> bool:
        """Record a status poll; True when a frame ended while nobody waited for its End-of-Scan."""
        ended = self.running and not running
        self.running = running
        return ended

    def missed_end(self, rows: int) -> Acquisition | None:
        """Whether the running frame, now at ``rows`` acquired lines, is a new one although no end
        was seen: the frame before ended while nobody waited in End-of-Scan and the next began at
        once (continuous scanning). Its last progress grab is then its :class:`Acquisition`
        (partial: the lines after that grab are gone from the buffer), else ``None``; the tracker
        follows the new frame from here."""
        last = self.last  # set with every reported line (progress), so there is one whenever self.rows > 0
        if rows >= self.rows or last is None:
            return None
        log.warning("nanonis: a frame ended while its End-of-Scan was missed and the next began at once; "
                    "keeping the %d of %d lines grabbed last", self.rows, last.shape[0])
        acq = self.finished(last)
        self.running = True  # the new frame runs
        return acq

    def has_new_lines(self, rows: int) -> bool:
        """Whether ``rows`` acquired lines (the running frame's progress) holds unreported lines."""
        if rows < self.rows:  # a new frame started
            self.rows = 0
        return rows != self.rows and rows != 0

    def progress(self, scan: Scan, rows: int) -> PartialScan:
        """The :class:`PartialScan` of the running frame grabbed with ``rows`` lines acquired;
        ``new_rows`` are display-frame rows (an *up* scan fills the image from the bottom)."""
        if not self._scan_id:
            self._scan_no += 1
            self._scan_id = f"nanonis-{self._scan_no}"
        ny = scan.shape[0]
        stored = range(self.rows, rows)
        new_rows = [ny - 1 - r for r in stored] if scan.direction == "up" else list(stored)
        self.rows, self.last = rows, scan
        return PartialScan(self._scan_id, scan, rows, new_rows)
