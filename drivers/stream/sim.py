"""A simulated microscope speaking the stream protocol: scans played line by line at a line rate.

The socket is XPUB (a PUB that also sees subscriptions, so :meth:`StreamSimulator.wait_for_subscriber`
can wait for the daemon instead of losing the first messages) or PUSH. ``stmwatch simulate-stream``
runs it; tests use it directly.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import zmq

from .protocol import STREAM_VERSION, encode_frame, encode_lines, encode_scan_end, encode_scan_start
from stmwatch.drivers.scan import Scan

log = logging.getLogger(__name__)


def acquisition_rows(scan: Scan) -> list[int]:
    """Display rows in the order a microscope acquires them (top first for ``down``)."""
    ny = scan.shape[0]
    return list(range(ny)) if scan.direction == "down" else list(range(ny - 1, -1, -1))


class StreamSimulator:
    """Sends scans over ZeroMQ as a microscope would; ``endpoint`` is where it really is bound."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*", socket: str = "pub", bind: bool = True,
                 topic: str = "stm", context: zmq.Context | None = None, curve: tuple[str, str] | None = None):
        self.curve = curve  # (the daemon's public key, this sender's secret key): a CURVE client
        self.endpoint = endpoint
        self.kind = socket
        self.bind = bind
        self.topic = topic.encode()
        self._context = context
        self._own_context = context is None
        self._socket: zmq.Socket | None = None
        self.sent = 0

    def __enter__(self) -> "StreamSimulator":
        ctx = self._context or zmq.Context()
        self._context = ctx
        sock = ctx.socket(zmq.XPUB if self.kind == "pub" else zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 10_000)  # on close, wait up to 10 s for queued messages to go out
        sock.setsockopt(zmq.SNDHWM, 100_000)
        if self.curve:
            from stmwatch.drivers.wire import secure_client

            secure_client(sock, *self.curve)
        try:
            if self.bind:
                deadline = time.monotonic() + 5.0
                while True:  # a restarted sender may find its port still held for a moment
                    try:
                        sock.bind(self.endpoint)
                        break
                    except zmq.ZMQError as exc:
                        if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = sock
        return self

    def __exit__(self, *exc) -> None:
        if self._socket is not None:
            self._socket.close()  # not unbind(): that would drop the messages still queued
            self._socket = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    def wait_for_subscriber(self, timeout: float) -> bool:
        """For PUB: wait until a subscriber to our topic has joined (True), or ``timeout`` s (False).
        For PUSH: True (PUSH waits for a peer by itself)."""
        if self.kind != "pub":
            return True
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._socket.poll(int(left * 1000) + 1, zmq.POLLIN):
                sub = self._socket.recv()
                if sub[:1] == b"\x01" and self.topic.startswith(sub[1:]):
                    return True
        return False

    def send(self, frames: list[bytes]) -> None:
        self._socket.send_multipart(frames)
        self.sent += 1

    def send_scan(self, scan: Scan, scan_id: str, line_rate: float = 0.0, lines_per_message: int = 1,
                  stop_after: int | None = None, abort: bool = False, surface: str | None = None,
                  junk_every: int = 0, stop: threading.Event | None = None) -> None:
        """``scan_start``, its lines in acquisition order (``line_rate`` lines/s; 0 = as fast as
        possible), then ``scan_end``. ``stop_after`` lines: stop sending lines there (with ``abort``
        send an aborted ``scan_end``; without, nothing: the daemon times the scan out).
        ``junk_every`` > 0 mixes a junk message in after every that many lines."""
        self.send(encode_scan_start(scan, scan_id, self.topic, surface))
        rows = acquisition_rows(scan)
        if stop_after is not None:
            rows = rows[:stop_after]
        blocks = [rows[i:i + lines_per_message] for i in range(0, len(rows), lines_per_message)]
        for n, block in enumerate(blocks, 1):
            if stop is not None and stop.is_set():
                return
            first = min(block)
            self.send(encode_lines(scan, scan_id, first, len(block), self.topic))
            if junk_every and n % junk_every == 0:
                for frames in junk_messages(self.topic, scan_id, scan.pixels[0])[n // junk_every % 6:][:1]:
                    self.send(frames)
            if line_rate > 0:
                time.sleep(len(block) / line_rate)
        if stop_after is None or abort:
            self.send(encode_scan_end(scan_id, aborted=abort, topic=self.topic))

    def send_frame(self, scan: Scan, scan_id: str, surface: str | None = None) -> None:
        self.send(encode_frame(scan, scan_id, self.topic, surface))


def junk_messages(topic: bytes, scan_id: str, nx: int) -> list[list[bytes]]:
    """Messages a daemon must drop: broken framing, not JSON, another version, unknown kind,
    a lines message of the wrong size, lines for a scan that is not open."""
    header = {"version": STREAM_VERSION, "kind": "lines", "scan_id": scan_id, "row": 0}
    return [
        [topic],
        [topic, b"{not json", b""],
        [topic, json.dumps({**header, "version": 99}).encode(), np.zeros(nx, "<f4").tobytes()],
        [topic, json.dumps({**header, "kind": "teleport"}).encode(), b""],
        [topic, json.dumps(header).encode(), np.zeros(3, "<f4").tobytes()],
        [topic, json.dumps({**header, "scan_id": "no-such-scan"}).encode(), np.zeros(nx, "<f4").tobytes()],
    ]
