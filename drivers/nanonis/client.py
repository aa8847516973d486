"""The client of the Nanonis TCP programming interface that turns finished frames into :class:`Scan`.

Orientation. The vendor document says what ``Scan.FrameDataGrab`` returns (channel name, a 2-D
float32 array of ``rows x columns`` and the scan direction, 1 = up) but not how the rows are
ordered. We take it to be the order of the scan buffer, which is the order Nanonis writes to the
``.sxm`` file: rows as acquired (for an *up* scan the first row is the *bottom* of the image),
and a backward frame's points as acquired (right to left). Scripts that plot FrameDataGrab data
flip an *up* frame top-bottom before showing it (e.g. New-Horizons-SPM's Scanbot "flip the scan
if it's taken from the bottom up"), which agrees. Lines not yet acquired are NaN. The one
conversion to the display frame is ``drivers.sxm.stored_to_display`` -- the same one the ``.sxm``
reader uses, so a frame grabbed over TCP and the same frame read from its ``.sxm`` file agree.

Geometry comes from ``Scan.FrameGet`` (centre, width, height in metres, angle in degrees,
positive clockwise: the convention of :class:`Scan`) and ``Scan.BufferGet`` (pixels per line,
lines); the bias from ``Bias.Get``.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import threading
from pathlib import Path, PureWindowsPath
from typing import Callable, TypeVar

import numpy as np

from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import stored_to_display

from .protocol import (
    HEADER_SIZE, Body, BodyWriter, NanonisError, ProtocolError, parse_response_header, recv_exact,
    request_header, trailing_error,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_NAME_UNIT = re.compile(r"^(.*?)\s*\(([^()]*)\)\s*$")


class NanonisTimeout(TimeoutError):
    """The Nanonis software did not answer within the socket timeout."""


def split_channel_name(name: str) -> tuple[str, str]:
    """``"Z (m)"`` → ``("Z", "m")``; a name without a unit keeps ``""`` as unit."""
    m = _NAME_UNIT.match(name)
    return (m.group(1), m.group(2)) if m else (name.strip(), "")


class NanonisClient:
    """One TCP connection to the Nanonis software (commands on it run one after another).

    Use as a context manager. ``timeout`` (s) bounds every command; ``wait_for_scan``
    extends it by its own wait. ``channel_indexes`` picks the buffer slots to grab (empty: all).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6501, timeout: float = 10.0,
                 channel_indexes: list[int] | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.channel_indexes = list(channel_indexes or [])
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    # ---- life cycle -----------------------------------------------------------------------------
    def __enter__(self) -> "NanonisClient":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("connected to Nanonis at %s:%d", self.host, self.port)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    # ---- one command ----------------------------------------------------------------------------
    def request(self, command: str, body: bytes = b"", read: Callable[[Body], T] = lambda b: None,
                timeout: float | None = None) -> T:
        """Send ``command`` with ``body``, read its response with ``read(Body)``, check the error block.

        Raises :class:`NanonisError` if Nanonis reports an error, :class:`ProtocolError` for bytes
        that are not a response to ``command`` (the connection is then closed: the stream can no
        longer be trusted), :class:`NanonisTimeout` if no answer comes in time.
        """
        with self._lock:
            if self._sock is None:
                self.open()
            sock = self._sock
            sock.settimeout(self.timeout if timeout is None else timeout)
            try:
                sock.sendall(request_header(command, len(body)) + body)
                name, size = parse_response_header(
                    recv_exact(sock, HEADER_SIZE, f"{command} response header"), command)
                if name != command:
                    raise ProtocolError(f"sent {command} but the response is for {name!r}")
                raw = recv_exact(sock, size, f"{command} response body")
            except socket.timeout:
                self.close()
                raise NanonisTimeout(f"Nanonis did not answer {command} within {sock.gettimeout():g} s") from None
            except (ProtocolError, OSError):
                self.close()
                raise
        reader = Body(raw, command)
        try:
            result = read(reader)
            status, description = reader.error()
            if reader.remaining:
                raise ProtocolError(f"{command}: {reader.remaining} bytes after the error block")
        except ProtocolError:
            found = trailing_error(raw)
            if found and found[0]:
                raise NanonisError(command, found[1]) from None
            raise
        if status:
            raise NanonisError(command, description)
        return result

    # ---- the commands stmwatch needs -----------------------------------------------------------
    def scan_status(self) -> bool:
        """``Scan.StatusGet``: True while a scan is running."""
        return bool(self.request("Scan.StatusGet", read=lambda b: b.uint32()))

    def wait_end_of_scan(self, timeout_s: float) -> tuple[bool, str]:
        """``Scan.WaitEndOfScan``: wait up to ``timeout_s`` for the next end of scan.

        Returns ``(timed_out, file_path)``; the path is empty if nothing was saved.
        """
        ms = -1 if timeout_s < 0 else int(round(timeout_s * 1000))

        def read(b: Body) -> tuple[bool, str]:
            timed_out = bool(b.uint32())
            size = b.uint32()
            return timed_out, b.take(size).decode("latin-1")

        wait = None if timeout_s < 0 else timeout_s + self.timeout
        return self.request("Scan.WaitEndOfScan", BodyWriter().int32(ms).bytes(), read, timeout=wait)

    def frame_get(self) -> tuple[float, float, float, float, float]:
        """``Scan.FrameGet``: centre x, centre y, width, height (m), angle (deg, clockwise)."""
        return self.request("Scan.FrameGet", read=lambda b: tuple(b.float32() for _ in range(5)))

    def buffer_get(self) -> tuple[list[int], int, int]:
        """``Scan.BufferGet``: channel indexes (slots 0..23), pixels per line, lines."""
        def read(b: Body):
            n = b.int32()
            indexes = b.int32_array(n)
            return indexes, b.int32(), b.int32()
        return self.request("Scan.BufferGet", read=read)

    def frame_data_grab(self, channel_index: int, forward: bool = True) -> tuple[str, np.ndarray, str]:
        """``Scan.FrameDataGrab``: ``(channel name, data as stored (rows, columns), "up"|"down")``."""
        def read(b: Body):
            name = b.string()
            data = b.float32_2d()
            return name, data, "up" if b.uint32() == 1 else "down"
        body = BodyWriter().uint32(channel_index).uint32(1 if forward else 0).bytes()
        return self.request("Scan.FrameDataGrab", body, read)

    def bias_get(self) -> float:
        """``Bias.Get``: the bias voltage (V)."""
        return self.request("Bias.Get", read=lambda b: b.float32())

    def scan_action(self, action: str = "start", direction: str = "down") -> None:
        """``Scan.Action``: start | stop | pause | resume, with the direction for a start."""
        code = ("start", "stop", "pause", "resume").index(action)
        body = BodyWriter().uint16(code).uint32(1 if direction == "up" else 0).bytes()
        self.request("Scan.Action", body)

    # ---- scans -----------------------------------------------------------------------------------
    def grab_scan(self, file_path: str = "") -> Scan:
        """The frame in the scan buffer now, every selected channel forward and backward, as a
        :class:`Scan` in the display frame (lines not acquired yet are NaN)."""
        cx, cy, width, height, angle = self.frame_get()
        slots, pixels, lines = self.buffer_get()
        wanted = [s for s in slots if not self.channel_indexes or s in self.channel_indexes]
        if not wanted:
            log.warning("none of channel_indexes %s is in the scan buffer %s; grabbing all",
                        self.channel_indexes, slots)
            wanted = slots
        if not wanted:
            raise ProtocolError("the scan buffer records no channels")
        channels, direction = [], None
        for slot in wanted:
            frames = {}
            for label, forward in (("forward", True), ("backward", False)):
                try:
                    name, data, scan_dir = self.frame_data_grab(slot, forward)
                except NanonisError as exc:
                    if forward:
                        raise
                    log.debug("no backward frame for channel %d: %s", slot, exc)
                    continue
                if data.shape != (lines, pixels):
                    raise ProtocolError(f"FrameDataGrab of channel {slot} gave {data.shape[0]} x {data.shape[1]},"
                                        f" BufferGet says {lines} lines x {pixels} pixels")
                direction = direction or scan_dir
                frames[label] = np.ascontiguousarray(stored_to_display(data, scan_dir, not forward))
            base, unit = split_channel_name(name)
            channels.append(Channel(name=base, unit=unit, index=slot, **frames))
        try:
            bias = self.bias_get()
        except NanonisError as exc:
            log.debug("no bias: %s", exc)
            bias = None
        now = dt.datetime.now().replace(microsecond=0)
        name = PureWindowsPath(file_path).name if file_path else f"nanonis_{now:%Y%m%d_%H%M%S}.sxm"
        header = {"NANONIS_FILE": file_path} if file_path else {}
        try:
            return Scan(channels=channels, pixels=(pixels, lines), range_m=(float(width), float(height)),
                        offset_m=(float(cx), float(cy)), angle_deg=float(angle), direction=direction or "down",
                        bias_v=None if bias is None else float(bias), acquired=now, source=Path(name),
                        header=header)
        except ValueError as exc:  # a frame no position can be given in (FrameGet's size 0 x 0 ...)
            raise ProtocolError(f"the controller's scan frame: {exc}") from None

    def wait_for_scan(self, timeout: float) -> Scan | None:
        """Wait up to ``timeout`` s for the running scan to end; the finished frame, or ``None``.

        A scan stopped early comes back too, with its missing lines NaN (``scan.partial``).
        """
        timed_out, path = self.wait_end_of_scan(timeout)
        if timed_out:
            return None
        return self.grab_scan(path)

    def acquired_rows(self, channel_index: int | None = None) -> tuple[int, str]:
        """How many lines of the current frame are acquired, and the scan direction (progress)."""
        slots, _, _ = self.buffer_get()
        slot = channel_index if channel_index is not None else (
            next((s for s in slots if s in self.channel_indexes), slots[0]) if slots else 0)
        _, data, direction = self.frame_data_grab(slot, True)
        return int((~np.isnan(data).all(axis=1)).sum()), direction
