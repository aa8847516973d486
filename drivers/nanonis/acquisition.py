"""The Nanonis driver as the daemon sees it: events (finished frames, new lines) from a controller.

``NanonisDriver(settings)`` waits in ``Scan.WaitEndOfScan`` for at most ``poll_interval_s`` at a
time, so a stop request is honoured within that period, and between waits asks for the scan
status and, while a frame runs, for the lines acquired so far (the programming interface has
no line events: live progress comes at the ``poll_interval_s`` pace). A broken connection is
retried with back-off (up to 30 s) rather than ending the daemon: the Nanonis software is often
restarted mid-session.
"""
from __future__ import annotations

import logging
import time

from stmwatch.drivers.scan import Scan

from .connection import NanonisConnection
from .protocol import NanonisError, ProtocolError
from .settings import NanonisSettings

log = logging.getLogger(__name__)


class NanonisDriver:
    """The daemon's view of a Nanonis controller: a context manager whose
    ``wait_for_acquisition(timeout)`` returns the next event, like the other drivers:

    * an :class:`~stmwatch.daemon.documents.Acquisition` (``source="nanonis"``, the grabbed
      :class:`Scan`) when a frame ends -- from ``Scan.WaitEndOfScan``, or, should that End-of-Scan
      be missed while the driver was busy, from ``Scan.StatusGet`` going from running to idle;
    * with ``live``, a :class:`~stmwatch.daemon.documents.PartialScan` whenever the running frame
      has new lines (found by grabbing the buffer every ``poll_interval_s``), for live segmentation;
    * ``None`` when nothing happened within ``timeout`` seconds.

    Connection failures are retried (with back-off) inside ``wait_for_acquisition``; they never
    end the daemon. ``connected`` and ``last_error`` tell the dashboard.
    """

    name = "nanonis"

    def __init__(self, settings: NanonisSettings, live: bool = True) -> None:
        self.settings = settings
        self.live = live
        self.conn: NanonisConnection | None = None
        self.connected = False
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self._running = False  # the last StatusGet said a scan was running
        self._rows = 0  # lines of the running frame already reported
        self._scan_no = 0
        self._scan_id = ""

    def __enter__(self) -> "NanonisDriver":
        return self

    def __exit__(self, *exc) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.connected = False

    def _connect(self) -> NanonisConnection | None:
        if self.conn is not None:
            return self.conn
        if time.monotonic() < self._retry_at:
            return None
        s = self.settings
        conn = NanonisConnection(s.host, s.port, s.timeout_s, channel_indexes=s.channel_indexes)
        try:
            conn.open()
        except OSError as exc:
            self._failed(exc)
            return None
        self.conn, self.connected, self._backoff = conn, True, 0.5
        return conn

    def _failed(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        log.warning("nanonis %s:%d: %s; retrying in %.1f s", self.settings.host, self.settings.port, exc,
                    self._backoff)
        if self.conn is not None:
            self.conn.close()
        self.conn, self.connected = None, False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def _acquisition(self, scan: Scan):
        from stmwatch.daemon.documents import Acquisition, scan_header, stream_content_hash

        self._running, self._rows = False, 0
        scan_id = self._scan_id or f"{scan.name}"
        self._scan_id = ""
        return Acquisition(path=f"nanonis:{scan.header.get('NANONIS_FILE') or scan_id}",
                           content_hash=stream_content_hash(scan_header(scan, scan_id), scan),
                           source="nanonis", scan=scan, complete=not scan.partial)

    def wait_for_acquisition(self, timeout: float):
        """The next event (see the class docstring), or ``None`` after ``timeout`` s."""
        from stmwatch.daemon.documents import PartialScan

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            conn = self._connect()
            if conn is None:
                time.sleep(max(0.0, min(left, self._retry_at - time.monotonic())))
                if time.monotonic() >= deadline:
                    return None
                continue
            try:
                timed_out, path = conn.wait_end_of_scan(max(0.0, min(left, self.settings.poll_interval_s)))
                if not timed_out:
                    return self._acquisition(conn.grab_scan(path))
                running = conn.scan_status()
                if self._running and not running:  # ended while we were not waiting
                    self._running = False
                    return self._acquisition(conn.grab_scan())
                self._running = running
                if running and self.live:
                    event = self._progress(conn, PartialScan)
                    if event is not None:
                        return event
            except (OSError, ProtocolError, NanonisError) as exc:
                self._failed(exc)
            if time.monotonic() >= deadline:
                return None

    def _progress(self, conn: NanonisConnection, PartialScan):
        rows, _direction = conn.acquired_rows()
        if rows < self._rows:  # a new frame started
            self._rows = 0
        if rows == self._rows or rows == 0:
            return None
        scan = conn.grab_scan()
        if not self._scan_id:
            self._scan_no += 1
            self._scan_id = f"nanonis-{self._scan_no}"
        ny = scan.shape[0]
        stored = range(self._rows, rows)
        new_rows = [ny - 1 - r for r in stored] if scan.direction == "up" else list(stored)
        self._rows = rows
        return PartialScan(self._scan_id, scan, rows, new_rows)
