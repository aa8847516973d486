"""The versioned documents that flow one way through the daemon: driver → pipeline → sinks.

Three kinds of document, each a small dataclass or JSON object with a schema version:

* :class:`Acquisition` -- what a driver hands the pipeline: one scan (complete, or partial when
  the microscope stopped early), as raw ``.sxm`` bytes (folder) or an assembled :class:`Scan`
  (stream), with its content hash and where it came from.
* :class:`PartialScan` -- a running scan after each ``lines`` message of the stream driver, for
  live hooks (live segmentation); never stored.
* :class:`ResultDocument` -- what the pipeline hands every sink (database, overlay publisher,
  dashboard): status, defects in display-frame pixels *and* scanner-frame metres, counts, timings,
  model and config versions. :func:`overlay_message` is its published JSON form.

The ZeroMQ **stream protocol** (version :data:`STREAM_VERSION`) that a microscope speaks to the
stream driver is also defined here: every message is multipart ``[topic, header, payload]``:

``topic``
    the configured topic (``[stream] topic``, default ``b"stm"``), for SUB filtering.
``header``
    UTF-8 JSON object with ``"version": 1``, ``"kind"`` and ``"scan_id"`` (any string).
``payload``
    little-endian float32 values (``<f4``), possibly empty.

Kinds:

``scan_start``
    header: ``pixels`` ``[columns, rows]``, ``range_m`` ``[w, h]`` (m), ``offset_m`` ``[x, y]``
    (m, frame centre), ``angle_deg`` (clockwise), ``direction`` (``"up"``/``"down"``),
    ``channels`` ``[{"name", "unit", "directions": ["forward", "backward"]}]``; optional
    ``bias_v``, ``acquired`` (ISO 8601), ``surface``. Payload empty.
``lines``
    header: ``row`` (display-frame row index, row 0 at the top), optional ``count`` (default 1):
    the message carries display rows ``row … row + count - 1``. Payload: for each of those rows
    in that order, for each channel, for each of its directions (forward first), ``columns``
    values **in display order** (left to right, a backward row already mirrored). Messages arrive
    in acquisition order: rows increasing for ``down``, decreasing for ``up``; a message whose
    first acquired row is not past the last one received is out of order and dropped (a gap --
    lost lines -- is accepted; those rows stay NaN).
``scan_end``
    header: optional ``aborted`` (bool). Closes the scan; lines never received stay NaN.
``frame``
    a whole scan at once: the header of ``scan_start``; payload every frame, channel by channel,
    forward before backward, each ``rows × columns`` in the display frame.

Anything else -- junk, another version, wrong payload sizes -- is logged and dropped by the
driver (:class:`ProtocolError`), never fatal.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from typing import Any

import numpy as np

from stmwatch.drivers.scan import Channel, Scan

STREAM_VERSION = 1  # the stream protocol above
RESULT_VERSION = 2  # ResultDocument / overlay JSON (2: "warnings" added)
STREAM_KINDS = ("scan_start", "lines", "scan_end", "frame")
STATUSES = ("ok", "partial", "failed")


class ProtocolError(ValueError):
    """A stream message that does not follow the protocol; the message says why."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_uid() -> str:
    return uuid.uuid4().hex


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# ---- driver → pipeline ------------------------------------------------------------------------
@dataclasses.dataclass
class Acquisition:
    """One scan from a driver.

    ``path`` identifies it (a file path, or ``stream:<scan_id>``); ``content_hash`` is the sha256
    of its bytes (``.sxm`` bytes, or the stream's header + data) and makes ingest idempotent.
    Exactly one of ``raw`` (``.sxm`` bytes, read by the pipeline) and ``scan`` is set.
    ``complete`` is False when the driver took it before it was finished (stable but short, or a
    stream scan that timed out or was aborted).
    """

    path: str
    content_hash: str
    source: str  # "folder" | "stream" | "nanonis"
    raw: bytes | None = None
    scan: Scan | None = None
    complete: bool = True
    surface: str | None = None  # the surface, if the source says; else the configured one
    received: dt.datetime = dataclasses.field(default_factory=utcnow)

    def read(self) -> Scan:
        """The scan: ``scan`` as given, or ``raw`` parsed by :mod:`stmwatch.drivers.sxm`.

        Raises :class:`~stmwatch.drivers.sxm.ScanReadError` for anything unreadable.
        """
        if self.scan is not None:
            return self.scan
        from stmwatch.drivers.sxm import ScanReadError, read_sxm_bytes

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
    """A scan still being acquired, after a ``lines`` message: ``rows_done`` lines so far."""

    scan_id: str
    scan: Scan
    rows_done: int
    new_rows: list[int]


# ---- pipeline → sinks -------------------------------------------------------------------------
@dataclasses.dataclass
class ResultDocument:
    """The outcome of one scan, as every sink sees it.

    ``defects`` are :meth:`stmwatch.models.defects.Defect.as_dict` dicts: ``x_px``/``y_px``
    display-frame pixels of the scan as read, ``x_m``/``y_m`` scanner-frame metres.
    ``status`` is ``ok``, ``partial`` (lines missing) or ``failed`` (``error`` says why);
    ``warnings`` what the operator should know about a scan that was analysed (a double tip, a
    surface unlike the configured one, pixels too coarse to segment), one sentence each.
    """

    uid: str
    path: str
    content_hash: str
    source: str
    status: str
    error: str | None
    surface: str | None
    geometry: dict | None
    acquired: dt.datetime | None
    received: dt.datetime
    processed: dt.datetime
    defects: list[dict]
    counts: dict[str, int]
    timing_ms: dict[str, float]
    model_versions: dict[str, str]
    config_version: str
    nan_rows: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    scan: Scan | None = dataclasses.field(default=None, repr=False)  # not serialised
    version: int = RESULT_VERSION


def overlay_message(doc: ResultDocument) -> dict[str, Any]:
    """The JSON object published for ``doc`` (``[b"overlay", json, optional png]``).

    Defect positions are scanner-frame metres (x right, y up, honouring offset and angle): what a
    lithography or manipulation tool needs to move the tip there.
    """
    return {
        "version": doc.version,
        "scan_uid": doc.uid,
        "file": doc.path,
        "content_hash": doc.content_hash,
        "status": doc.status,
        "error": doc.error,
        "surface": doc.surface,
        "acquired": doc.acquired.isoformat() if doc.acquired else None,
        "processed": doc.processed.isoformat(),
        "geometry": doc.geometry,
        "defects": doc.defects,
        "counts": doc.counts,
        "n_defects": len(doc.defects),
        "warnings": doc.warnings,
        "model_versions": doc.model_versions,
        "config_version": doc.config_version,
    }


# ---- the stream protocol ----------------------------------------------------------------------
@dataclasses.dataclass
class StreamMessage:
    """A parsed stream message: its kind, header and payload as float32 (may be empty)."""

    kind: str
    scan_id: str
    header: dict
    payload: np.ndarray


def parse_message(frames: list[bytes]) -> StreamMessage:
    """Multipart frames → :class:`StreamMessage`, or :class:`ProtocolError` saying what is wrong.

    Checks the framing, JSON, version, kind and that the payload is whole float32 values; sizes
    against the scan's geometry are checked by the assembler that knows the geometry.
    """
    if len(frames) not in (2, 3):
        raise ProtocolError(f"expected 3 frames [topic, header, payload], got {len(frames)}")
    try:
        header = json.loads(bytes(frames[1]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    version = header.get("version")
    if version != STREAM_VERSION:
        raise ProtocolError(f"unknown protocol version {version!r} (this daemon speaks {STREAM_VERSION})")
    kind = header.get("kind")
    if kind not in STREAM_KINDS:
        raise ProtocolError(f"unknown kind {kind!r}; kinds are {STREAM_KINDS}")
    scan_id = header.get("scan_id")
    if not isinstance(scan_id, (str, int)) or str(scan_id) == "":
        raise ProtocolError(f"{kind}: no scan_id")
    payload = bytes(frames[2]) if len(frames) == 3 else b""
    if len(payload) % 4:
        raise ProtocolError(f"{kind}: payload of {len(payload)} bytes is not whole float32 values")
    data = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    return StreamMessage(kind, str(scan_id), header, data)


def _pair(header: dict, key: str, kind=float) -> tuple:
    value = header.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ProtocolError(f"{key} must be a pair, got {value!r}")
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ProtocolError(f"{key} must be two numbers, got {value!r}") from None
    if not all(np.isfinite(out)):
        raise ProtocolError(f"{key} must be finite, got {value!r}")
    return out


def empty_scan(header: dict) -> Scan:
    """A :class:`Scan` of NaN frames with the geometry and channels of a ``scan_start``/``frame``."""
    nx, ny = _pair(header, "pixels", int)
    if nx <= 0 or ny <= 0 or nx * ny > 1 << 24:
        raise ProtocolError(f"pixels {nx} x {ny} out of range")
    channels_in = header.get("channels")
    if not isinstance(channels_in, list) or not channels_in:
        raise ProtocolError("channels must be a non-empty list")
    channels = []
    for i, ch in enumerate(channels_in):
        if not isinstance(ch, dict) or not isinstance(ch.get("name"), str):
            raise ProtocolError(f"channel {i} has no name")
        dirs = ch.get("directions", ["forward", "backward"])
        if not isinstance(dirs, list) or not dirs or any(d not in ("forward", "backward") for d in dirs) \
                or len(set(dirs)) != len(dirs):
            raise ProtocolError(f"channel {ch['name']}: directions {dirs!r}")
        frames = {d: np.full((ny, nx), np.nan, np.float32) for d in ("forward", "backward") if d in dirs}
        channels.append(Channel(name=ch["name"], unit=str(ch.get("unit", "")), index=i, **frames))
    acquired = None
    if header.get("acquired"):
        try:
            acquired = dt.datetime.fromisoformat(str(header["acquired"]))
        except ValueError:
            raise ProtocolError(f"acquired {header['acquired']!r} is not ISO 8601") from None
    try:
        angle = float(header.get("angle_deg", 0.0))
        bias = None if header.get("bias_v") is None else float(header["bias_v"])
        return Scan(channels=channels, pixels=(nx, ny), range_m=_pair(header, "range_m"),
                    offset_m=_pair(header, "offset_m") if "offset_m" in header else (0.0, 0.0),
                    angle_deg=angle, direction=str(header.get("direction", "down")), bias_v=bias,
                    acquired=acquired)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad geometry: {exc}") from None


def frames_per_line(scan: Scan) -> int:
    return sum(len(ch.directions) for ch in scan.channels)


def scan_header(scan: Scan, scan_id: str, kind: str = "scan_start", surface: str | None = None) -> dict:
    """The ``scan_start``/``frame`` header describing ``scan``."""
    header = {
        "version": STREAM_VERSION, "kind": kind, "scan_id": scan_id,
        "pixels": list(scan.pixels), "range_m": list(scan.range_m), "offset_m": list(scan.offset_m),
        "angle_deg": scan.angle_deg, "direction": scan.direction, "bias_v": scan.bias_v,
        "acquired": scan.acquired.isoformat() if scan.acquired else None,
        "channels": [{"name": c.name, "unit": c.unit, "directions": c.directions} for c in scan.channels],
    }
    if surface:
        header["surface"] = surface
    return header


def _encode(topic: bytes, header: dict, payload: np.ndarray | None = None) -> list[bytes]:
    data = b"" if payload is None else np.ascontiguousarray(payload, dtype="<f4").tobytes()
    return [topic, json.dumps(header).encode(), data]


def encode_scan_start(scan: Scan, scan_id: str, topic: bytes = b"stm", surface: str | None = None) -> list[bytes]:
    return _encode(topic, scan_header(scan, scan_id, "scan_start", surface))


def encode_lines(scan: Scan, scan_id: str, row: int, count: int = 1, topic: bytes = b"stm") -> list[bytes]:
    """Display rows ``row … row+count-1`` of every frame of ``scan`` as one ``lines`` message."""
    rows = [np.concatenate([f[r] for ch in scan.channels for f in ch.frames()]) for r in range(row, row + count)]
    header = {"version": STREAM_VERSION, "kind": "lines", "scan_id": scan_id, "row": row, "count": count}
    return _encode(topic, header, np.concatenate(rows))


def encode_scan_end(scan_id: str, aborted: bool = False, topic: bytes = b"stm") -> list[bytes]:
    return _encode(topic, {"version": STREAM_VERSION, "kind": "scan_end", "scan_id": scan_id, "aborted": aborted})


def encode_frame(scan: Scan, scan_id: str, topic: bytes = b"stm", surface: str | None = None) -> list[bytes]:
    payload = np.stack([f for ch in scan.channels for f in ch.frames()])
    return _encode(topic, scan_header(scan, scan_id, "frame", surface), payload)


def stream_content_hash(header: dict, scan: Scan) -> str:
    """sha256 of a stream scan's geometry and data: the same scan streamed twice has one hash."""
    h = hashlib.sha256()
    keep = {k: header.get(k) for k in ("pixels", "range_m", "offset_m", "angle_deg", "direction",
                                       "bias_v", "acquired", "channels")}
    h.update(json.dumps(keep, sort_keys=True).encode())
    for ch in scan.channels:
        for f in ch.frames():
            h.update(np.ascontiguousarray(f, dtype="<f4").tobytes())
    return h.hexdigest()

