"""The overlay publisher: one ZeroMQ PUB message per processed scan.

Message: multipart ``[b"overlay", JSON, PNG]`` (the PNG frame only with ``publish_png``). The JSON
is :func:`stmwatch.daemon.documents.overlay_message`: schema ``version``, ``scan_uid``, ``file``,
``status``, ``geometry`` and ``defects`` with ``x_m``/``y_m`` in the scanner frame (metres,
honouring the scan's offset and clockwise angle) beside ``x_px``/``y_px`` display pixels,
``counts`` and (version 2 on) ``warnings``, one sentence each (a double tip, with its offset; a
scan unlike the configured surface; pixels too coarse), also written on the PNG. Bound to ``tcp://127.0.0.1:5556`` by default: local only unless the config says so.
"""
from __future__ import annotations

import json
import logging

import zmq

from stmwatch.drivers.wire import SecuritySettings, secure_server

from .documents import ResultDocument, overlay_message

log = logging.getLogger(__name__)

TOPIC = b"overlay"


def overlay_png_bytes(doc: ResultDocument) -> bytes:
    """A PNG of the scan with its defects marked (empty when there is no scan)."""
    if doc.scan is None:
        return b""
    from stmwatch.models.defects import Defect
    from stmwatch.models.render import overlay_png

    defects = [Defect(row=d["y_px"], col=d["x_px"], x_m=d["x_m"], y_m=d["y_m"], area_px=d["area_px"],
                      score=d["score"], label=d["label"]) for d in doc.defects]
    return overlay_png(doc.scan, defects, notes=doc.warnings)


def bind_publisher(context: zmq.Context, endpoint: str, linger_ms: int, security: SecuritySettings | None = None,
                   what: str = "publish endpoint"):
    """``(socket, authenticator)``: a PUB socket bound to ``endpoint`` with a deep send queue
    (10 000 messages) and ``linger_ms`` to flush on close, a CURVE server per ``security``
    (:func:`stmwatch.drivers.wire.secure_server`; the authenticator, or None, is stopped by
    :func:`close_publisher`); a :class:`ValueError` naming the endpoint if it cannot bind, or if
    it would open to the network without CURVE."""
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, linger_ms)
    socket.setsockopt(zmq.SNDHWM, 10_000)
    auth = None
    try:
        auth = secure_server(context, socket, security, endpoint, bind=True, what=what)
        socket.bind(endpoint)
    except (zmq.ZMQError, ValueError) as exc:
        close_publisher(socket, auth, 0)
        if isinstance(exc, ValueError):
            raise
        raise ValueError(f"cannot publish on {endpoint!r}: {exc}") from None
    return socket, auth


def close_publisher(socket, auth, linger_ms: int | None = None) -> None:
    """Close a socket of :func:`bind_publisher` and stop its authenticator."""
    if socket is not None:
        socket.close(linger_ms)
    if auth is not None:
        auth.stop()


class OverlayPublisher:
    """A sink: publishes each result document; ``endpoint`` is the address actually bound."""

    def __init__(self, endpoint: str, png: bool = False, context: zmq.Context | None = None,
                 security: SecuritySettings | None = None):
        self.png = png
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._auth = None
        try:
            self._socket, self._auth = bind_publisher(self._context, endpoint, linger_ms=500, security=security,
                                                      what="[daemon] publish")
        except ValueError:
            self._socket = None
            self.close()
            raise
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.published = 0
        log.info("publishing overlays on %s", self.endpoint)

    def __call__(self, doc: ResultDocument) -> None:
        frames = [TOPIC, json.dumps(overlay_message(doc)).encode()]
        if self.png:
            try:
                frames.append(overlay_png_bytes(doc))
            except Exception:
                log.exception("%s: overlay PNG failed; published without it", doc.path)
        self._socket.send_multipart(frames)
        self.published += 1

    def close(self) -> None:
        if self._socket is not None or self._auth is not None:
            close_publisher(self._socket, self._auth)
            self._socket = self._auth = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    def __repr__(self) -> str:
        return f"OverlayPublisher({getattr(self, 'endpoint', '?')!r})"


def decode_overlay(frames: list[bytes]) -> tuple[dict, bytes | None]:
    """``[b"overlay", JSON, PNG?]`` → ``(message, png or None)``; ValueError for anything else."""
    if len(frames) < 2 or bytes(frames[0]) != TOPIC:
        raise ValueError("not an overlay message")
    message = json.loads(bytes(frames[1]))
    png = bytes(frames[2]) if len(frames) > 2 and frames[2] else None
    return message, png
