"""The Nanonis driver's loop: wait for each frame to end, grab it, hand it on; reconnect on failure.

``NanonisAcquisition(settings).scans(stop)`` yields one :class:`Scan` per End-of-Scan until
``stop`` is set. It waits in ``Scan.WaitEndOfScan`` for at most ``poll_interval_s`` at a time, so
a stop request is honoured within that period; a broken connection is retried with back-off
(up to 30 s) rather than ending the daemon: the Nanonis software is often restarted mid-session.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from stmwatch.drivers.scan import Scan

from .connection import NanonisConnection
from .protocol import NanonisError, ProtocolError
from .settings import NanonisSettings

log = logging.getLogger(__name__)


class NanonisAcquisition:
    """Scans from a Nanonis controller over TCP (config ``driver = "nanonis"``)."""

    name = "nanonis"

    def __init__(self, settings: NanonisSettings) -> None:
        self.settings = settings
        self.connected = False
        self.last_error: str | None = None

    def connection(self) -> NanonisConnection:
        s = self.settings
        return NanonisConnection(s.host, s.port, s.timeout_s, channel_indexes=s.channel_indexes)

    def scans(self, stop: threading.Event) -> Iterator[Scan]:
        """Every frame that ends from now on, until ``stop`` is set."""
        backoff = 0.5
        while not stop.is_set():
            try:
                with self.connection() as conn:
                    self.connected, backoff = True, 0.5
                    while not stop.is_set():
                        scan = conn.wait_for_acquisition(self.settings.poll_interval_s)
                        if scan is not None:
                            log.info("nanonis: frame %s ended (%d x %d, %s%s)", scan.name, *scan.pixels,
                                     scan.direction, ", partial" if scan.partial else "")
                            yield scan
            except (OSError, ProtocolError, NanonisError) as exc:
                self.last_error = str(exc)
                log.warning("nanonis %s:%d: %s; reconnecting in %.1f s", self.settings.host,
                            self.settings.port, exc, backoff)
            finally:
                self.connected = False
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
