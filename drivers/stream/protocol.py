"""The ZeroMQ stream protocol that a microscope speaks to the stream driver.

Version :data:`STREAM_VERSION`. Every message is multipart ``[topic, header, payload]``:

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
import json
import math

import numpy as np

from stmwatch.drivers.base import ProtocolError, content_hash, scan_geometry
from stmwatch.drivers.scan import Channel, Scan

__all__ = ["STREAM_VERSION", "STREAM_KINDS", "ProtocolError", "OversizeError", "StreamMessage", "parse_message",
           "declared_bytes", "empty_scan",
           "frames_per_line", "scan_header", "encode_scan_start", "encode_lines", "encode_scan_end",
           "encode_frame", "stream_content_hash"]

STREAM_VERSION = 1  # the stream protocol above
STREAM_KINDS = ("scan_start", "lines", "scan_end", "frame")


@dataclasses.dataclass
class StreamMessage:
    """A parsed stream message: its kind, header and payload as float32 (may be empty)."""

    kind: str
    scan_id: str
    header: dict
    payload: np.ndarray


def parse_message(frames: list[bytes], max_bytes: int | None = None) -> StreamMessage:
    """Multipart frames → :class:`StreamMessage`, or :class:`ProtocolError` saying what is wrong.

    Checks the framing, the size (at most ``max_bytes`` in all: :class:`OversizeError`), JSON,
    version, kind and that the payload is whole float32 values; sizes against the scan's geometry
    are checked by the assembler that knows the geometry.
    """
    if len(frames) not in (2, 3):
        raise ProtocolError(f"expected 3 frames [topic, header, payload], got {len(frames)}")
    size = sum(len(f) for f in frames)
    if max_bytes is not None and size > max_bytes:
        raise OversizeError(f"message of {size} bytes, more than max_message_bytes = {max_bytes}")
    try:
        header = json.loads(bytes(frames[1]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: [[[[...]]]]
        raise ProtocolError(f"header is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
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
        finite = all(math.isfinite(v) for v in out)  # math: np.isfinite raises on a huge int
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"{key} must be two finite numbers, got {str(value)[:80]}") from None
    if not finite:
        raise ProtocolError(f"{key} must be finite, got {value!r}")
    return out


class OversizeError(ProtocolError):
    """A message, or the scan a header declares, larger than the configured caps."""


def declared_bytes(header: dict, max_channels: int | None = None, max_bytes: int | None = None) -> int:
    """Bytes of float32 data the scan of a ``scan_start``/``frame`` header declares, from the header
    alone (nothing allocated); :class:`OversizeError` for more than ``max_channels`` channels or
    ``max_bytes`` bytes."""
    nx, ny = _pair(header, "pixels", int)
    if nx <= 0 or ny <= 0 or nx * ny > 1 << 24:
        raise ProtocolError(f"pixels {nx} x {ny} out of range")
    channels_in = header.get("channels")
    if not isinstance(channels_in, list) or not channels_in:
        raise ProtocolError("channels must be a non-empty list")
    if max_channels is not None and len(channels_in) > max_channels:
        raise OversizeError(f"{len(channels_in)} channels declared, more than max_channels = {max_channels}")
    n_frames = sum(len(ch.get("directions", ["forward", "backward"])) if isinstance(ch, dict)
                   and isinstance(ch.get("directions", []), list) else 1 for ch in channels_in)
    need = 4 * nx * ny * max(1, n_frames)
    if max_bytes is not None and need > max_bytes:
        raise OversizeError(f"header declares {need} bytes of scan data, more than max_message_bytes = {max_bytes}")
    return need


def empty_scan(header: dict, max_bytes: int | None = None, max_channels: int | None = None) -> Scan:
    """A :class:`Scan` of NaN frames with the geometry and channels of a ``scan_start``/``frame``.

    The declared size is checked against ``max_bytes`` and ``max_channels`` before anything is
    allocated (:class:`OversizeError`)."""
    declared_bytes(header, max_channels, max_bytes)
    nx, ny = _pair(header, "pixels", int)
    channels_in = header["channels"]
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
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"bad geometry: {exc}") from None


def frames_per_line(scan: Scan) -> int:
    return sum(len(ch.directions) for ch in scan.channels)


def scan_header(scan: Scan, scan_id: str, kind: str = "scan_start", surface: str | None = None) -> dict:
    """The ``scan_start``/``frame`` header describing ``scan``."""
    header = {"version": STREAM_VERSION, "kind": kind, "scan_id": scan_id, **scan_geometry(scan)}
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
    """sha256 of a stream scan's geometry (as received) and data: the same scan streamed twice has
    one hash."""
    return content_hash(header, scan)
