"""The bytes of the Nanonis TCP programming interface (vendor document ``TCPProtocol_SPM.pdf``).

Every message, request or response, is a 40-byte header followed by a body; every number is
big-endian.

Request header: command name (32 bytes ASCII, zero-padded) | body size (int32) | send-response
flag (uint16, 1 = answer me) | 2 bytes zero.

Response header: command name (32 bytes) | body size (int32) | 4 bytes zero. The response body
holds the return arguments and then the error block: error status (uint32, 1 = error), error
description size (int32) and the description (ASCII, that many bytes).

Body types: ``int`` int32, ``unsigned int16``/``unsigned int32``, ``float32``/``float64``; a
string in a body is an int32 byte count followed by the bytes; 1-D arrays are preceded by their
element count (sent as a separate argument); a 2-D float32 array by its rows and columns, then
the values row after row.

This module is pure bytes: :class:`Body` reads a body, :class:`BodyWriter` writes one; both the
driver (``connection.py``) and the fake server (``sim.py``) use them, so the tests check them
against layouts computed by hand from the vendor document.
"""
from __future__ import annotations

import socket
import struct

import numpy as np

HEADER_SIZE = 40
from stmwatch.drivers.base import ProtocolError  # bytes that are not a valid response (or the link broke)

NAME_SIZE = 32
MAX_BODY = 1 << 30  # 1 GiB: far above any real frame (8192² float32 is 256 MiB)

_REQUEST_HEADER = struct.Struct(">32siHH")
_RESPONSE_HEADER = struct.Struct(">32si4x")


class NanonisError(RuntimeError):
    """The Nanonis software executed a command and reported an error (its error block)."""

    def __init__(self, command: str, description: str):
        self.command = command
        self.description = description
        super().__init__(f"Nanonis {command}: {description or 'error (no description)'}")


# ---- headers ---------------------------------------------------------------------------------
def _name_bytes(command: str) -> bytes:
    raw = command.encode("ascii")
    if len(raw) > NAME_SIZE:
        raise ValueError(f"command name {command!r} is longer than {NAME_SIZE} bytes")
    return raw


def request_header(command: str, body_size: int, send_response: bool = True) -> bytes:
    """The 40-byte request header for ``command`` with a body of ``body_size`` bytes."""
    return _REQUEST_HEADER.pack(_name_bytes(command), body_size, 1 if send_response else 0, 0)


def response_header(command: str, body_size: int) -> bytes:
    """The 40-byte response header (used by the fake server)."""
    return _RESPONSE_HEADER.pack(_name_bytes(command), body_size)


def parse_request_header(raw: bytes) -> tuple[str, int, bool]:
    """40 request-header bytes → ``(command, body_size, send_response)``."""
    name, size, flag, _ = _REQUEST_HEADER.unpack(raw)
    return _decode_name(name), size, bool(flag)


def parse_response_header(raw: bytes, command: str = "?") -> tuple[str, int]:
    """40 response-header bytes → ``(command, body_size)``; :class:`ProtocolError` if malformed
    (``command`` is the one sent, for the message)."""
    name, size = _RESPONSE_HEADER.unpack(raw)
    if size < 8 or size > MAX_BODY:
        raise ProtocolError(f"{command}: not a Nanonis response (header {raw[:16]!r}..., body size {size}; "
                            f"a response body holds 8 .. {MAX_BODY} bytes)")
    return _decode_name(name), size


def _decode_name(raw: bytes) -> str:
    name = raw.rstrip(b"\x00")
    if b"\x00" in name:
        raise ProtocolError(f"command name field {raw!r} is not a zero-padded name")
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"command name field {raw!r} is not ASCII") from None


# ---- bodies ----------------------------------------------------------------------------------
class BodyWriter:
    """Builds a message body, big-endian, in argument order."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def int32(self, v: int) -> "BodyWriter":
        self._parts.append(struct.pack(">i", v))
        return self

    def uint32(self, v: int) -> "BodyWriter":
        self._parts.append(struct.pack(">I", v))
        return self

    def uint16(self, v: int) -> "BodyWriter":
        self._parts.append(struct.pack(">H", v))
        return self

    def float32(self, v: float) -> "BodyWriter":
        self._parts.append(struct.pack(">f", v))
        return self

    def float64(self, v: float) -> "BodyWriter":
        self._parts.append(struct.pack(">d", v))
        return self

    def string(self, s: str) -> "BodyWriter":
        """An int32 byte count and the bytes (a variable-size body string)."""
        raw = s.encode("latin-1", errors="replace")
        self._parts.append(struct.pack(">i", len(raw)) + raw)
        return self

    def raw(self, data: bytes) -> "BodyWriter":
        """Bytes as they are (e.g. a string whose size was sent as a separate argument)."""
        self._parts.append(bytes(data))
        return self

    def int32_array(self, values) -> "BodyWriter":
        """The elements only (the count is a separate argument in every Nanonis command)."""
        self._parts.append(np.asarray(values, dtype=">i4").tobytes())
        return self

    def float32_2d(self, data: np.ndarray) -> "BodyWriter":
        """Rows (int32), columns (int32), then the values row after row as float32."""
        data = np.asarray(data)
        rows, cols = data.shape
        self._parts.append(struct.pack(">ii", rows, cols) + data.astype(">f4").tobytes())
        return self

    def error(self, status: bool = False, description: str = "") -> "BodyWriter":
        """The error block that ends every response body."""
        return self.uint32(1 if status else 0).string(description)

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Body:
    """Reads a message body in argument order; running past its end is a :class:`ProtocolError`."""

    def __init__(self, raw: bytes, command: str = "?") -> None:
        self.raw = raw
        self.command = command
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise ProtocolError(
                f"{self.command}: response body too short ({len(self.raw)} bytes; needed {n} more at {self.pos})")
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def int32(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def uint32(self) -> int:
        return struct.unpack(">I", self._take(4))[0]

    def uint16(self) -> int:
        return struct.unpack(">H", self._take(2))[0]

    def float32(self) -> float:
        return struct.unpack(">f", self._take(4))[0]

    def float64(self) -> float:
        return struct.unpack(">d", self._take(8))[0]

    def take(self, n: int) -> bytes:
        """The next ``n`` raw bytes."""
        return self._take(n)

    def string(self) -> str:
        n = self.int32()
        if n < 0:
            raise ProtocolError(f"{self.command}: negative string size {n}")
        return self._take(n).decode("latin-1")

    def int32_array(self, count: int) -> list[int]:
        if count < 0:
            raise ProtocolError(f"{self.command}: negative array size {count}")
        return [int(v) for v in np.frombuffer(self._take(4 * count), dtype=">i4")]

    def float32_2d(self) -> np.ndarray:
        """Rows, columns, then the values → a native float32 array of shape (rows, columns)."""
        rows, cols = self.int32(), self.int32()
        if rows < 0 or cols < 0:
            raise ProtocolError(f"{self.command}: negative 2-D array size {rows} x {cols}")
        raw = self._take(4 * rows * cols)
        return np.frombuffer(raw, dtype=">f4").astype(np.float32).reshape(rows, cols)

    def error(self) -> tuple[bool, str]:
        """The error block: ``(status, description)``."""
        status = self.uint32()
        return bool(status), self.string()

    @property
    def remaining(self) -> int:
        return len(self.raw) - self.pos


def trailing_error(body: bytes) -> tuple[bool, str] | None:
    """The error block at the end of ``body``, found from the end, or ``None`` if there is none.

    Used only when the return arguments cannot be read (a response not shaped like the command's
    documented one), to still report the server's own error description.
    """
    for n in range(0, min(len(body) - 8, 4096) + 1):
        end = len(body) - n
        (size,) = struct.unpack(">i", body[end - 4:end])
        (status,) = struct.unpack(">I", body[end - 8:end - 4])
        if size == n and status in (0, 1):
            return bool(status), body[end:].decode("latin-1")
    return None


# ---- sockets ---------------------------------------------------------------------------------
def recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    """Read exactly ``n`` bytes; :class:`ProtocolError` if the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes of {what}")
        buf += chunk
    return bytes(buf)
