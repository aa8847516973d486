"""The ZeroMQ stream driver: scans arriving line by line (or whole) from a microscope.

    with StreamConnection(settings) as conn:
        while True:
            event = conn.wait_for_acquisition(timeout=1.0)  # None on timeout
            if isinstance(event, PartialScan): ...   # a running scan after new lines
            elif event is not None: pipeline.submit(event)  # a finished (or timed-out) scan

The socket is SUB (subscribed to ``[stream] topic``) or PULL, connecting to the microscope's
endpoint (or binding, with ``bind = true``). ZeroMQ reconnects on its own when the sender
restarts. Messages that break the protocol are logged and dropped, never fatal; a scan with no
message for ``timeout_s`` seconds is closed as a partial scan.

Memory is bounded by the caps of ``[stream]``, checked before anything is allocated: a message
over ``max_message_bytes``, a header declaring a scan larger than that or more than
``max_channels`` channels is dropped with one warning; at most ``max_open_scans`` scans are held
(the socket is not read while the pipeline is that far behind, and a new scan beyond it is
dropped). ``drops`` counts the dropped messages by reason.
"""
from __future__ import annotations

import collections
import logging
import time

import zmq

from stmwatch.drivers.base import Acquisition, PartialScan

from stmwatch.drivers.wire import SecuritySettings, resolve_endpoint, secure_server

from .acquisition import NotOpenError, StreamAssembler
from .protocol import OversizeError, ProtocolError, parse_message
from .settings import StreamSettings

log = logging.getLogger(__name__)


class StreamConnection:
    """A SUB/PULL socket and a :class:`StreamAssembler`; ``dropped`` counts rejected messages,
    ``drops`` by reason (``oversize``, ``too_many_scans``, ``protocol``, ``error``)."""

    def __init__(self, settings: StreamSettings, endpoint: str | None = None, *,
                 context: zmq.Context | None = None, emit_partial: bool = True,
                 security: SecuritySettings | None = None):
        self.settings = settings
        self.security = security  # [security]: CURVE server (only allowed microscopes get in)
        self._auth = None
        self.endpoint = endpoint or settings.endpoint
        self.emit_partial = emit_partial
        self.assembler = StreamAssembler(settings.timeout_s, where="stream", max_bytes=settings.max_message_bytes,
                                         max_channels=settings.max_channels)
        self.dropped = 0
        self.drops: collections.Counter = collections.Counter()
        self._context = context
        self._own_context = context is None
        self._socket: zmq.Socket | None = None
        self._events: collections.deque = collections.deque()
        self._warned: list[str] = []  # scans whose lines were dropped as not open (warned once)

    def __enter__(self) -> "StreamConnection":
        ctx = self._context or zmq.Context()
        self._context = ctx
        kind = zmq.SUB if self.settings.socket == "sub" else zmq.PULL
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        # libzmq refuses (disconnects) a peer sending a single part larger than this: never allocated
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, self.settings.topic.encode())
        try:
            if not self.settings.bind:
                resolve_endpoint(self.endpoint, "stream endpoint")
            self._auth = secure_server(ctx, sock, self.security, self.endpoint, self.settings.bind, "[stream] endpoint")
        except ValueError:
            sock.close()
            self._close_auth()
            raise
        try:
            if self.settings.bind:
                sock.bind(self.endpoint)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            self._close_auth()
            raise ValueError(f"stream endpoint {self.endpoint!r}: {exc}") from None
        self._socket = sock
        log.info("stream: %s %s %s (topic %r)", self.settings.socket.upper(),
                 "bound to" if self.settings.bind else "connected to", self.endpoint, self.settings.topic)
        return self

    def _close_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __exit__(self, *exc) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._close_auth()
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    @property
    def held(self) -> int:
        """Scans in memory: the open one and finished ones not yet handed on."""
        return sum(isinstance(e, Acquisition) for e in self._events) + (self.assembler.current is not None)

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.drops[reason] += 1

    def _handle(self, frames: list[bytes], now: float) -> None:
        try:
            if frames and not bytes(frames[0]).startswith(self.settings.topic.encode()):
                raise ProtocolError(f"topic {bytes(frames[0])[:40]!r} is not {self.settings.topic!r}")
            msg = parse_message(frames, self.settings.max_message_bytes)
            if msg.kind in ("scan_start", "frame") and self.held >= self.settings.max_open_scans + \
                    (msg.kind == "scan_start" and self.assembler.current is not None):
                self._drop("too_many_scans")
                log.warning("stream: dropped %s %s: %d scans held, max_open_scans = %d (the analysis is behind)",
                            msg.kind, msg.scan_id, self.held, self.settings.max_open_scans)
                return
            events = self.assembler.feed(msg, now)
        except OversizeError as exc:
            self._drop("oversize")
            log.warning("stream: dropped a message: %s", exc)
            return
        except ProtocolError as exc:
            self._drop("protocol")
            # a daemon that joins mid-scan sees every remaining line of it: warn once per scan
            key = exc.scan_id if isinstance(exc, NotOpenError) else None
            if key is not None and key in self._warned:
                log.debug("stream: dropped a message: %s", exc)
            else:
                log.warning("stream: dropped a message: %s", exc)
                if key is not None:
                    self._warned.append(key)
                    del self._warned[:-16]
            return
        except Exception as exc:  # never fatal
            self._drop("error")
            log.warning("stream: dropped a message (%s: %s)", type(exc).__name__, exc)
            return
        for event in events:
            if isinstance(event, PartialScan) and not self.emit_partial:
                continue
            self._events.append(event)

    @property
    def pending(self) -> int:
        """Events not yet handed on, plus 1 while a scan is open."""
        return len(self._events) + (self.assembler.current is not None)

    def wait_for_acquisition(self, timeout: float) -> Acquisition | PartialScan | None:
        """The next event: a finished scan (:class:`Acquisition`) or, with ``emit_partial``, a
        running one after new lines (:class:`PartialScan`); ``None`` if none within ``timeout`` s."""
        assert self._socket is not None, "use StreamConnection as a context manager"
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            self._events.extend(self.assembler.expire(now))
            if self._events:
                return self._events.popleft()
            left = deadline - now
            if left <= 0:
                return None
            # wake in time to expire an open scan
            if self.assembler.current is not None:
                left = min(left, max(0.0, self.assembler.current.last_message + self.settings.timeout_s - now) + 0.01)
            if self._socket.poll(max(1, int(left * 1000)), zmq.POLLIN):
                while True:
                    try:
                        frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    self._handle(frames, time.monotonic())
                    if len(self._events) > 64 or self.held >= self.settings.max_open_scans:
                        break  # hand on what is held before reading more (back-pressure)
