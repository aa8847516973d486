"""The Nanonis driver: events (finished frames, new lines) from a controller over TCP.

``NanonisConnection(settings)`` waits in ``Scan.WaitEndOfScan`` for at most ``poll_interval_s`` at a
time, so a stop request is honoured within that period, and between waits asks for the scan
status and, while a frame runs, for the lines acquired so far (the programming interface has
no line events: live progress comes at the ``poll_interval_s`` pace). A broken connection is
retried with back-off (up to 30 s) rather than ending the daemon: the Nanonis software is often
restarted mid-session.
"""
from __future__ import annotations

import logging
import time

from stmwatch.drivers.base import Acquisition, PartialScan

from .acquisition import FrameTracker
from .client import NanonisClient
from .protocol import NanonisError, ProtocolError
from .settings import NanonisSettings

log = logging.getLogger(__name__)


class NanonisConnection:
    """The daemon's view of a Nanonis controller: a context manager whose
    ``wait_for_acquisition(timeout)`` returns the next event, like the other drivers:

    * an :class:`~stmwatch.drivers.base.Acquisition` (``source="nanonis"``, the grabbed
      :class:`Scan`) when a frame ends -- from ``Scan.WaitEndOfScan``, or, should that End-of-Scan
      be missed while the driver was busy, from ``Scan.StatusGet`` going from running to idle;
    * with ``live``, a :class:`~stmwatch.drivers.base.PartialScan` whenever the running frame
      has new lines (found by grabbing the buffer every ``poll_interval_s``), for live segmentation;
    * ``None`` when nothing happened within ``timeout`` seconds.

    Connection failures are retried (with back-off) inside ``wait_for_acquisition``; they never
    end the daemon. ``connected`` and ``last_error`` tell the dashboard.
    """

    name = "nanonis"

    def __init__(self, settings: NanonisSettings, live: bool = True) -> None:
        self.settings = settings
        self.live = live
        self.client: NanonisClient | None = None
        self.connected = False
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self.frames = FrameTracker()

    def __enter__(self) -> "NanonisConnection":
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.connected = False

    def _connect(self) -> NanonisClient | None:
        if self.client is not None:
            return self.client
        if time.monotonic() < self._retry_at:
            return None
        s = self.settings
        conn = NanonisClient(s.host, s.port, s.timeout_s, channel_indexes=s.channel_indexes)
        try:
            conn.open()
        except OSError as exc:
            self._failed(exc)
            return None
        self.client, self.connected, self._backoff = conn, True, 0.5
        return conn

    def _failed(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        log.warning("nanonis %s:%d: %s; retrying in %.1f s", self.settings.host, self.settings.port, exc,
                    self._backoff)
        if self.client is not None:
            self.client.close()
        self.client, self.connected = None, False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    @property
    def pending(self) -> int:
        """1 while a frame is running (it will become an acquisition), else 0."""
        return int(self.frames.running)

    def wait_for_acquisition(self, timeout: float) -> Acquisition | PartialScan | None:
        """The next event (see the class docstring), or ``None`` after ``timeout`` s."""
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
                    return self.frames.finished(conn.grab_scan(path))
                running = conn.scan_status()
                if self.frames.status(running):  # ended while we were not waiting
                    return self.frames.finished(conn.grab_scan())
                if running and self.live:
                    rows, _direction = conn.acquired_rows()
                    missed = self.frames.missed_end(rows)  # ended unseen, the next frame begun
                    if missed is not None:
                        return missed
                    if self.frames.has_new_lines(rows):
                        return self.frames.progress(conn.grab_scan(), rows)
            except (OSError, ProtocolError, NanonisError) as exc:
                self._failed(exc)
            if time.monotonic() >= deadline:
                return None
