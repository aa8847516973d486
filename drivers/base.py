"""What every driver hands the daemon, and the interface every driver follows.

Drivers sit at the bottom of stmwatch: they import nothing from ``models`` or ``daemon``. Each
driver folder (``folder/``, ``stream/``, ``nanonis/``) holds the same files, each with one role:

``connection.py``
    the driver: a context manager whose ``wait_for_acquisition(timeout)`` returns the next
    event, or ``None`` on timeout (:class:`Driver`);
``acquisition.py``
    turning what the instrument gives (a file, stream messages, grabbed frames) into events,
    free of sockets and threads, so it is tested on its own;
``protocol.py``
    the wire format, where there is one (``stream/``, ``nanonis/``);
``settings.py``
    the driver's ``config.toml`` section;
``sim.py``
    a simulated instrument for tests and the demo, fed with :class:`Scan` objects it is given.

Two kinds of event (documents with a schema version, flowing one way: driver → pipeline):

* :class:`Acquisition` -- one scan (complete, or partial when the microscope stopped early), as
  raw ``.sxm`` bytes (folder) or an assembled :class:`Scan` (stream, Nanonis), with its content
  hash and where it came from;
* :class:`PartialScan` -- a running scan after new lines, for live hooks; never stored.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Protocol

import numpy as np

from .scan import Scan

ACQUISITION_VERSION = 1  # Acquisition / PartialScan


class ProtocolError(ValueError):
    """A message from an instrument (stream message, Nanonis TCP reply) that breaks its protocol."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utcnow() -> dt.datetime:
    """Now, UTC, naive (as stored in the database)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def scan_geometry(scan: Scan) -> dict:
    """The JSON-able geometry and channel list of ``scan`` (the stream protocol's header keys)."""
    return {
        "pixels": list(scan.pixels), "range_m": list(scan.range_m), "offset_m": list(scan.offset_m),
        "angle_deg": scan.angle_deg, "direction": scan.direction, "bias_v": scan.bias_v,
        "acquired": scan.acquired.isoformat() if scan.acquired else None,
        "channels": [{"name": c.name, "unit": c.unit, "directions": c.directions} for c in scan.channels],
    }


def content_hash(geometry: dict, scan: Scan) -> str:
    """sha256 of a scan's ``geometry`` (:func:`scan_geometry` keys) and frame data: the same scan
    received twice has one hash, which makes ingest idempotent."""
    h = hashlib.sha256()
    keep = {k: geometry.get(k) for k in ("pixels", "range_m", "offset_m", "angle_deg", "direction",
                                         "bias_v", "acquired", "channels")}
    h.update(json.dumps(keep, sort_keys=True).encode())
    for ch in scan.channels:
        for f in ch.frames():
            h.update(np.ascontiguousarray(f, dtype="<f4").tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class Acquisition:
    """One scan from a driver.

    ``path`` identifies it (a file path, ``stream:<scan_id>`` or ``nanonis:<file>``);
    ``content_hash`` is the sha256 of its bytes (``.sxm`` bytes, or :func:`content_hash`) and makes
    ingest idempotent. Exactly one of ``raw`` (``.sxm`` bytes, read by the pipeline) and ``scan``
    is set. ``complete`` is False when the driver took it before it was finished (stable but
    short, or a stream scan that timed out or was aborted).
    """

    path: str
    content_hash: str
    source: str  # "folder" | "stream" | "nanonis"
    raw: bytes | None = None
    scan: Scan | None = None
    complete: bool = True
    surface: str | None = None  # the surface, if the source says; else the configured one
    received: dt.datetime = dataclasses.field(default_factory=utcnow)
    version: int = ACQUISITION_VERSION

    def read(self) -> Scan:
        """The scan: ``scan`` as given, or ``raw`` parsed by :mod:`stmwatch.drivers.sxm`.

        Raises :class:`~stmwatch.drivers.sxm.ScanReadError` for anything unreadable.
        """
        if self.scan is not None:
            return self.scan
        from .sxm import ScanReadError, read_sxm_bytes

        if self.raw is None:
            raise ScanReadError(self.path, "no data")
        try:
            # a file taken as stable but short keeps what was written; the rest is NaN (partial)
            scan = read_sxm_bytes(self.raw, self.path, allow_truncated=not self.complete)
        except ScanReadError:
            raise
        except Exception as exc:  # the reader's last line of defence, as read_sxm
            raise ScanReadError(self.path, f"unreadable ({type(exc).__name__}: {exc})") from exc
        return scan


@dataclasses.dataclass
class PartialScan:
    """A scan still being acquired: ``rows_done`` lines so far, ``new_rows`` (display-frame row
    indices) since the last event."""

    scan_id: str
    scan: Scan
    rows_done: int
    new_rows: list[int]
    version: int = ACQUISITION_VERSION


Event = Acquisition | PartialScan


class Driver(Protocol):
    """What the daemon needs of a driver (``FolderConnection``, ``StreamConnection``,
    ``NanonisConnection``): a context manager that opens the instrument on ``__enter__`` (errors
    raise there) and closes it on ``__exit__``."""

    def __enter__(self) -> "Driver": ...

    def __exit__(self, *exc) -> None: ...

    def wait_for_acquisition(self, timeout: float) -> Event | None:
        """The next event, or ``None`` when nothing came within ``timeout`` seconds."""

    @property
    def pending(self) -> int:
        """Scans seen but not yet handed on (files still being written, an open stream scan)."""
