"""Assembling scans from the ZeroMQ stream protocol (see :mod:`stmwatch.drivers.stream.protocol`).

:class:`StreamAssembler` is the protocol's state machine, free of sockets: feed it parsed
messages and the time, and it returns the events for the pipeline -- a :class:`PartialScan`
after every accepted ``lines`` message, an :class:`Acquisition` when a scan ends (``scan_end``,
a ``frame``, a new ``scan_start`` while one is open, or ``timeout_s`` of silence). A message that
does not fit (lines for a scan that is not open, wrong sizes, a line behind one already received)
raises :class:`ProtocolError`; the connection logs and drops it.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from stmwatch.drivers.base import Acquisition, Event, PartialScan
from stmwatch.drivers.scan import Scan

from .protocol import (ProtocolError, StreamMessage, declared_bytes, empty_scan, frames_per_line,
                       stream_content_hash)

log = logging.getLogger(__name__)


class NotOpenError(ProtocolError):
    """A ``lines``/``scan_end`` for a scan that is not open (e.g. the daemon joined mid-scan)."""

    def __init__(self, scan_id: str, message: str):
        self.scan_id = scan_id
        super().__init__(message)


@dataclasses.dataclass
class _Open:
    scan_id: str
    header: dict
    scan: Scan
    last_row: int | None = None
    rows_done: int = 0
    last_message: float = 0.0


def _fill_rows(scan: Scan, first_row: int, count: int, values: np.ndarray) -> None:
    nx = scan.pixels[0]
    frames = [f for ch in scan.channels for f in ch.frames()]
    lines = values.reshape(count, len(frames), nx)
    for j in range(count):
        for k, frame in enumerate(frames):
            frame[first_row + j] = lines[j, k]


class StreamAssembler:
    """Builds scans from stream messages; one scan is open at a time (a microscope scans one)."""

    def __init__(self, timeout_s: float, where: str = "stream", max_bytes: int | None = None,
                 max_channels: int | None = None):
        self.timeout_s = timeout_s
        self.where = where
        self.max_bytes, self.max_channels = max_bytes, max_channels  # caps checked before allocating
        self.current: _Open | None = None

    def _acquisition(self, o: _Open, complete: bool) -> Acquisition:
        return Acquisition(path=f"{self.where}:{o.scan_id}", content_hash=stream_content_hash(o.header, o.scan),
                           source="stream", scan=o.scan, complete=complete, surface=o.header.get("surface"))

    def _close(self, complete: bool, why: str) -> list[Event]:
        o, self.current = self.current, None
        if o is None:
            return []
        ny = o.scan.pixels[1]
        complete = complete and o.rows_done == ny
        if not complete:
            log.warning("stream scan %s closed with %d of %d lines: %s", o.scan_id, o.rows_done, ny, why)
        return [self._acquisition(o, complete)]

    def feed(self, msg: StreamMessage, now: float) -> list[Event]:
        """The events ``msg`` gives (may be none); :class:`ProtocolError` if it does not fit."""
        if msg.kind == "scan_start":
            if msg.payload.size:
                raise ProtocolError("scan_start carries no payload")
            scan = empty_scan(msg.header, self.max_bytes, self.max_channels)
            if msg.payload.size:
                raise ProtocolError("scan_start carries no payload")
            events = self._close(False, f"a new scan {msg.scan_id} started") if self.current else []
            self.current = _Open(msg.scan_id, msg.header, scan, last_message=now)
            return events
        if msg.kind == "frame":
            need = declared_bytes(msg.header, self.max_channels, self.max_bytes)
            if msg.payload.size * 4 != need:
                raise ProtocolError(f"frame {msg.scan_id}: {msg.payload.size * 4} bytes of data, its header "
                                    f"declares {need}")
            scan = empty_scan(msg.header, self.max_bytes, self.max_channels)
            ny, nx = scan.shape
            n_frames = frames_per_line(scan)
            if msg.payload.size != n_frames * ny * nx:
                raise ProtocolError(f"frame {msg.scan_id}: {msg.payload.size} values, geometry implies "
                                    f"{n_frames} frames of {nx} x {ny} = {n_frames * ny * nx}")
            data = msg.payload.reshape(n_frames, ny, nx)
            k = 0
            for ch in scan.channels:
                for d in ch.directions:
                    setattr(ch, d, np.ascontiguousarray(data[k]))
                    k += 1
            o = _Open(msg.scan_id, msg.header, scan, rows_done=ny)
            events = self._close(False, f"a frame {msg.scan_id} arrived") if self.current else []
            return events + [self._acquisition(o, True)]

        o = self.current
        if o is None or o.scan_id != msg.scan_id:
            raise NotOpenError(msg.scan_id, f"{msg.kind} for scan {msg.scan_id!r}, which is not open "
                                f"(open: {o.scan_id if o else None!r})")
        if msg.kind == "scan_end":
            aborted = bool(msg.header.get("aborted", False))
            return self._close(not aborted, "aborted" if aborted else "scan_end before every line arrived")

        # lines
        ny, nx = o.scan.shape
        row, count = msg.header.get("row"), msg.header.get("count", 1)
        if not isinstance(row, int) or not isinstance(count, int) or isinstance(row, bool) or isinstance(count, bool) \
                or count < 1:
            raise ProtocolError(f"lines: row {row!r} and count {count!r} must be integers, count >= 1")
        if row < 0 or row + count > ny:
            raise ProtocolError(f"lines: rows {row}..{row + count - 1} outside 0..{ny - 1}")
        need = count * frames_per_line(o.scan) * nx
        if msg.payload.size != need:
            raise ProtocolError(f"lines: {msg.payload.size} values, expected {need} "
                                f"({count} line(s) x {frames_per_line(o.scan)} frames x {nx} columns)")
        down = o.scan.direction == "down"
        first, last = (row, row + count - 1) if down else (row + count - 1, row)
        if o.last_row is not None and (first <= o.last_row if down else first >= o.last_row):
            raise ProtocolError(f"lines: row {first} out of order after row {o.last_row} "
                                f"(scan direction {o.scan.direction})")
        _fill_rows(o.scan, row, count, msg.payload)
        o.last_row, o.rows_done, o.last_message = last, o.rows_done + count, now
        new_rows = list(range(row, row + count))
        return [PartialScan(o.scan_id, o.scan, o.rows_done, new_rows)]

    def expire(self, now: float) -> list[Event]:
        """Close the open scan as partial if nothing came for ``timeout_s`` seconds."""
        if self.current is not None and now - self.current.last_message >= self.timeout_s:
            return self._close(False, f"no message for {self.timeout_s:g} s")
        return []
