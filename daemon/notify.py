"""The systemd notification protocol (``sd_notify``), without a dependency.

systemd passes ``NOTIFY_SOCKET`` to a ``Type=notify`` service: the path of an ``AF_UNIX``
datagram socket, or an abstract name written with a leading ``@``. A state is one datagram of
``KEY=VALUE`` lines: ``READY=1`` (start-up done), ``STATUS=...`` (one line shown by ``systemctl
status``), ``WATCHDOG=1`` (alive; systemd restarts the service when pings stop for
``WatchdogSec``, passed to us as ``WATCHDOG_USEC``), ``RELOADING=1`` (+ ``MONOTONIC_USEC``) and
``STOPPING=1``. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op returning False.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends states to systemd. ``socket_path`` defaults to ``$NOTIFY_SOCKET``.

    ``watchdog_s`` > 0 forces the ping period (seconds); 0 takes half of ``$WATCHDOG_USEC`` (the
    period sd_watchdog_enabled(3) recommends), honouring ``$WATCHDOG_PID``; no period: no pings.
    """

    def __init__(self, socket_path: str | None = None, watchdog_s: float = 0.0,
                 environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self.watchdog_period_s = watchdog_s if watchdog_s > 0 else _watchdog_period(env)
        self._last_ping = float("-inf")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; False if not under systemd or it failed."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8", errors="replace"), target)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False

    # ---- the states --------------------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> bool:
        """Ping the watchdog now."""
        self._last_ping = time.monotonic()
        return self.send("WATCHDOG=1")

    def watchdog_due(self, now: float | None = None) -> bool:
        """Ping if a watchdog period is set and it has passed since the last ping; True if pinged."""
        if not self.watchdog_period_s:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_period_s:
            return self.watchdog()
        return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _watchdog_period(env) -> float:
    """Half of ``WATCHDOG_USEC`` in seconds, or 0 when there is no watchdog for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0.0
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return 0.0
    return usec / 2e6 if usec > 0 else 0.0
