"""A fake Nanonis software: a threaded TCP server speaking the programming interface's bytes.

It serves :class:`Scan` objects one after another as if a microscope were acquiring them: each
scan fills the scan buffer line by line (in acquisition order, as Nanonis does: an *up* scan
starts at the bottom, a backward frame runs right to left), then an End-of-Scan is signalled to
every client waiting in ``Scan.WaitEndOfScan``. The commands the driver uses are implemented
(``Scan.StatusGet``, ``Scan.WaitEndOfScan``, ``Scan.FrameGet``, ``Scan.BufferGet``,
``Scan.FrameDataGrab``, ``Scan.Action``, ``Bias.Get``); any other gets an error response, as the
real software answers a command it does not know.

Two clocks:

* ``line_time_s=None`` (tests): nothing moves until the test calls :meth:`FakeNanonisServer.start_scan`,
  :meth:`~FakeNanonisServer.advance` or :meth:`~FakeNanonisServer.complete_scan` (or a client sends
  ``Scan.Action`` start/stop); :meth:`~FakeNanonisServer.wait_for_waiter` tells when a client is
  blocked in ``WaitEndOfScan`` (optionally: in a later request than a given count), so a test
  never depends on timing.
* ``line_time_s > 0`` (demos, benchmarks): a thread acquires one line every ``line_time_s``,
  pauses ``gap_s`` between scans, and cycles through the scans (``repeat``).

``faults`` makes one command misbehave, for the driver's error tests: ``"error"`` (error block
set), ``"garbage"`` (a header that is not a response), ``"truncate"`` (header promises more
than is sent, then the connection closes), ``"silent"`` (never answer).
"""
from __future__ import annotations

import logging
import socket
import socketserver
import threading
from typing import Sequence

import numpy as np

from stmwatch.drivers.scan import Scan
from stmwatch.drivers.sxm import stored_to_display

from .protocol import HEADER_SIZE, Body, BodyWriter, parse_request_header, recv_exact, response_header

log = logging.getLogger(__name__)


def channel_slots(scan: Scan) -> list[int]:
    """The buffer slot of each channel: its own index when they are distinct, else 0, 1, 2 ..."""
    idx = [ch.index for ch in scan.channels]
    return idx if len(set(idx)) == len(idx) else list(range(len(scan.channels)))


class FakeNanonisServer:
    """A fake Nanonis TCP server on ``host``:``port`` (0: a free port; see :attr:`port`).

    Use as a context manager (or :meth:`start`/:meth:`stop`).
    """

    def __init__(self, scans: Sequence[Scan], host: str = "127.0.0.1", port: int = 0,
                 line_time_s: float | None = None, gap_s: float = 0.5, repeat: bool = False,
                 faults: dict[str, str] | None = None) -> None:
        if not scans:
            raise ValueError("the fake server needs at least one scan to serve")
        self.scans = list(scans)
        self.line_time_s, self.gap_s, self.repeat = line_time_s, gap_s, repeat
        self.faults = dict(faults or {})
        self._cond = threading.Condition()
        self.index = -1  # the scan in the buffer (-1: none yet; the buffer shows scan 0, all NaN)
        self.rows_done = 0
        self.running = False
        self.ends = 0  # End-of-Scan events so far
        self.last_path = ""
        self.waiters = 0  # clients blocked in WaitEndOfScan now
        self.waits = 0  # WaitEndOfScan requests so far
        self.commands: list[str] = []  # every command received, in order
        self._stop = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._threads: list[threading.Thread] = []

    # ---- life cycle -----------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> "FakeNanonisServer":
        t = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                             name="fake-nanonis", daemon=True)
        t.start()
        self._threads.append(t)
        if self.line_time_s:
            c = threading.Thread(target=self._clock, name="fake-nanonis-clock", daemon=True)
            c.start()
            self._threads.append(c)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "FakeNanonisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the microscope ------------------------------------------------------------------------
    @property
    def scan(self) -> Scan:
        """The scan in the buffer."""
        return self.scans[max(self.index, 0) % len(self.scans)]

    def start_scan(self) -> bool:
        """Start acquiring the next scan; False if there is none left (and ``repeat`` is off)."""
        with self._cond:
            if self.index + 1 >= len(self.scans) and not self.repeat:
                return False
            self.index += 1
            self.rows_done, self.running = 0, True
            self._cond.notify_all()
            return True

    def advance(self, rows: int = 1) -> None:
        """Acquire ``rows`` more lines of the running scan; the last one ends the scan."""
        with self._cond:
            if not self.running:
                return
            self.rows_done = min(self.rows_done + rows, self.scan.shape[0])
            if self.rows_done >= self.scan.shape[0]:
                self._end(saved=True)
            self._cond.notify_all()

    def complete_scan(self) -> None:
        """Start the next scan if none is running, and acquire all of it."""
        with self._cond:
            if not self.running:
                self.start_scan()
            self.advance(self.scan.shape[0])

    def stop_scan(self) -> None:
        """Stop the running scan early (its remaining lines stay NaN; nothing is saved)."""
        with self._cond:
            if self.running:
                self._end(saved=False)

    def _end(self, saved: bool) -> None:
        self.running = False
        self.ends += 1
        self.last_path = f"C:\\Data\\{self.scan.name}" if saved and self.scan.source else ""
        self._cond.notify_all()

    def wait_for_waiter(self, timeout: float = 10.0, after: int | None = None) -> bool:
        """Block until a client waits in ``Scan.WaitEndOfScan`` -- with ``after``, in a request
        later than the first ``after`` ones (see :attr:`waits`) -- False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.waiters > 0 and (after is None or self.waits > after), timeout)

    def _clock(self) -> None:
        while not self._stop.is_set():
            if not self.start_scan():
                return
            while self.running and not self._stop.wait(self.line_time_s):
                self.advance(1)
            if self._stop.wait(self.gap_s):
                return

    # ---- what the buffer holds ---------------------------------------------------------------
    def stored_frame(self, slot: int, forward: bool) -> tuple[str, np.ndarray, str] | str:
        """``(name, data in acquisition order with NaN for lines not acquired, direction)`` or an
        error description."""
        scan = self.scan
        slots = channel_slots(scan)
        if slot not in slots:
            return f"Channel index {slot} is not in the scan buffer {slots}"
        ch = scan.channels[slots.index(slot)]
        display = ch.forward if forward else ch.backward
        if display is None:
            display = ch.forward if ch.forward is not None else ch.backward
        data = np.array(stored_to_display(display, scan.direction, not forward), dtype=np.float32)
        done = self.rows_done if self.index >= 0 else 0
        data[done:] = np.nan
        name = f"{ch.name} ({ch.unit})" if ch.unit else ch.name
        return name, data, scan.direction


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeNanonisServer


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        fake: FakeNanonisServer = self.server.fake
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not fake._stop.is_set():
            try:
                header = recv_exact(sock, HEADER_SIZE, "request header")
            except Exception:
                return
            command, size, respond = parse_request_header(header)
            try:
                body = Body(recv_exact(sock, size, "request body"), command)
            except Exception:
                return
            fake.commands.append(command)
            fault = fake.faults.get(command)
            if fault == "silent":
                fake._stop.wait()
                return
            if fault == "garbage":
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\xff" * 12)
                continue
            try:
                out = self.answer(fake, command, body)
            except Exception as exc:  # a malformed request: answer with an error, as Nanonis does
                out = BodyWriter().error(True, f"{type(exc).__name__}: {exc}")
            if fault == "error":
                out = BodyWriter().error(True, f"{command}: simulated failure")
            if not respond:
                continue
            payload = out.bytes()
            if fault == "truncate":
                sock.sendall(response_header(command, len(payload) + 100) + payload[:10])
                return
            sock.sendall(response_header(command, len(payload)) + payload)

    @staticmethod
    def answer(fake: FakeNanonisServer, command: str, body: Body) -> BodyWriter:
        w = BodyWriter()
        if command == "Scan.StatusGet":
            return w.uint32(1 if fake.running else 0).error()
        if command == "Scan.WaitEndOfScan":
            timeout_ms = body.int32()
            timeout = None if timeout_ms < 0 else timeout_ms / 1000
            with fake._cond:
                seen = fake.ends
                fake.waiters += 1
                fake.waits += 1
                fake._cond.notify_all()
                try:
                    ended = fake._cond.wait_for(lambda: fake.ends > seen or fake._stop.is_set(), timeout)
                finally:
                    fake.waiters -= 1
                path = fake.last_path if ended else ""
            raw = path.encode("latin-1")
            return w.uint32(0 if ended else 1).uint32(len(raw)).raw(raw).error()
        if command == "Scan.FrameGet":
            s = fake.scan
            return (w.float32(s.offset_m[0]).float32(s.offset_m[1]).float32(s.range_m[0])
                    .float32(s.range_m[1]).float32(s.angle_deg).error())
        if command == "Scan.BufferGet":
            s = fake.scan
            slots = channel_slots(s)
            return w.int32(len(slots)).int32_array(slots).int32(s.pixels[0]).int32(s.pixels[1]).error()
        if command == "Scan.FrameDataGrab":
            slot, direction = body.uint32(), body.uint32()
            with fake._cond:
                got = fake.stored_frame(slot, direction == 1)
            if isinstance(got, str):
                return w.string("").float32_2d(np.zeros((0, 0))).uint32(0).error(True, got)
            name, data, scan_dir = got
            return w.string(name).float32_2d(data).uint32(1 if scan_dir == "up" else 0).error()
        if command == "Bias.Get":
            bias = fake.scan.bias_v
            return w.float32(0.0 if bias is None else bias).error()
        if command == "Scan.Action":
            action, _direction = body.uint16(), body.uint32()
            if action == 0:
                fake.start_scan()
            elif action == 1:
                fake.stop_scan()
            return w.error()
        return w.error(True, f"Unknown command {command}")


def serve(scans: Sequence[Scan], port: int = 6501, line_time_s: float = 0.05, gap_s: float = 1.0,
          repeat: bool = True) -> FakeNanonisServer:
    """Start a free-running fake Nanonis on ``port`` (for demos); the caller stops it."""
    return FakeNanonisServer(scans, port=port, line_time_s=line_time_s, gap_s=gap_s, repeat=repeat).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m stmwatch.drivers.nanonis.sim FILE_OR_DIR...``: a fake Nanonis serving the given
    ``.sxm`` scans (e.g. from ``stmwatch simulate --out DIR``), for trying ``driver = "nanonis"``
    without a microscope."""
    import argparse
    import time
    from pathlib import Path

    from stmwatch.drivers.sxm import ScanReadError, read_sxm

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("scans", nargs="+", help=".sxm files, or folders of them")
    parser.add_argument("--port", type=int, default=6501)
    parser.add_argument("--lines-per-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    paths = [q for p in map(Path, args.scans) for q in (sorted(p.glob("*.sxm")) if p.is_dir() else [p])]
    scans = []
    for path in paths:
        try:
            scans.append(read_sxm(path))
        except ScanReadError as exc:
            print(f"skipped: {exc}", flush=True)
    if not scans:
        print("error: no readable .sxm scans given", flush=True)
        return 2
    server = serve(scans, port=args.port, line_time_s=1.0 / args.lines_per_s)
    print(f"fake Nanonis on 127.0.0.1:{server.port}: {len(scans)} scans at {args.lines_per_s:g} lines/s, "
          "repeating; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
