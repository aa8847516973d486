"""ZeroMQ endpoints and their security: the stream driver's socket and the daemon's publishers.

:func:`check_endpoint` checks an endpoint's form at config time (``tcp://HOST:PORT`` with a port
1-65535 or ``*`` when binding, ``ipc://PATH``, ``inproc://NAME``); :func:`resolve_endpoint` checks
at start that a ``tcp`` host to connect to exists (ZeroMQ itself connects in the background and
would retry an unknown host forever without a word). :func:`is_loopback` tells whether a bound
endpoint stays on this PC.

CURVE (``[security]``, :class:`SecuritySettings`): the daemon is the CURVE *server* on every
socket it owns -- the overlay and live publishers and the stream socket, bound or connecting --
with the secret key made by ``stmwatch keys generate DIR`` (``zmq.auth`` certificate files);
only clients whose public keys are listed in ``allowed_clients`` get through ZeroMQ's ZAP
handshake (:func:`secure_server`), everyone else is dropped by libzmq before a byte of theirs is
read. A client (``stmwatch listen``, ``examples/retarget.py``, a microscope sending the stream)
uses :func:`secure_client` with the daemon's public key and its own secret key. Without CURVE a
socket bound to the network (anything but loopback) is refused unless ``allow_insecure_remote``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket

log = logging.getLogger(__name__)

SCHEMES = ("tcp", "ipc", "inproc")


def split_tcp(endpoint: str) -> tuple[str, str]:
    """``tcp://HOST:PORT`` → ``(HOST, PORT)`` (IPv6 hosts in brackets, returned without them)."""
    rest = endpoint[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise ValueError(f"endpoint {endpoint!r} has no HOST:PORT")
    if ";" in host:  # tcp://source;host:port
        host = host.split(";", 1)[1]
    return host.strip("[]"), port


def check_endpoint(endpoint: str, bind: bool, what: str = "endpoint") -> None:
    """A :class:`ValueError` naming ``what`` if ``endpoint`` is not a usable ZeroMQ endpoint."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(f"{what} must be a ZeroMQ endpoint like tcp://127.0.0.1:5556 (schemes {SCHEMES}), "
                         f"not {endpoint!r}")
    if scheme != "tcp":
        return
    host, port = split_tcp(endpoint)
    if port == "*" and bind:
        return
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what} {endpoint!r}: port {port!r} is not 1-65535" + (" or *" if bind else ""))
    if host == "*" and not bind:
        raise ValueError(f"{what} {endpoint!r}: cannot connect to host '*'")


def resolve_endpoint(endpoint: str, what: str = "endpoint") -> None:
    """A :class:`ValueError` if the host of a ``tcp`` endpoint to connect to does not resolve."""
    if not endpoint.startswith("tcp://"):
        return
    host, port = split_tcp(endpoint)
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise ValueError(f"{what} {endpoint!r}: host {host!r} does not resolve ({exc})") from None


def is_loopback(endpoint: str) -> bool:
    """True when a bound endpoint is reachable from this PC only (``ipc``, ``inproc``, a loopback
    address or ``localhost``); ``*``, an interface name or another address is the network."""
    if not endpoint.startswith("tcp://"):
        return True
    host, _ = split_tcp(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name (eth0) or a host name: the network


# ---- CURVE -------------------------------------------------------------------------------------
@dataclasses.dataclass
class SecuritySettings:
    """``[security]``: CURVE on the overlay, live and stream sockets."""

    curve: bool = False  # encrypt and authenticate the overlay, live and stream sockets
    secret_key: str = ""  # the daemon's secret key file: DIR/server.key_secret from `stmwatch keys generate DIR`
    allowed_clients: list[str] = dataclasses.field(default_factory=list)  # client public keys: .key files or Z85
    client_secret_key: str = ""  # the key of stmwatch's own clients (dashboard, listen): DIR/client.key_secret
    allow_insecure_remote: bool = False  # bind to the network without CURVE (anyone there can read and write)

    def check(self) -> None:
        if self.curve:
            if not self.secret_key:
                raise ValueError("curve = true needs secret_key (stmwatch keys generate DIR makes DIR/server.key_secret)")
            server_keys(self)
            if not allowed_keys(self):
                raise ValueError("curve = true needs allowed_clients: the public keys (.key files) of the clients")


def load_key_file(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    """``(public, secret)`` Z85 keys of a ``zmq.auth`` certificate file; ValueError naming the file."""
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(os.path.expanduser(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"key file {path!r}: {exc}") from None
    if secret and not secret_key:
        raise ValueError(f"key file {path!r} holds no secret key (use the .key_secret file)")
    return public, secret_key


def server_keys(settings: SecuritySettings) -> tuple[bytes, bytes]:
    """The daemon's ``(public, secret)`` keys from ``secret_key``."""
    public, secret = load_key_file(settings.secret_key, secret=True)
    return public, secret


def allowed_keys(settings: SecuritySettings) -> frozenset[bytes]:
    """The public keys of the allowed clients: each entry a 40-character Z85 key or a key file."""
    import zmq.utils.z85

    keys = set()
    for entry in settings.allowed_clients:
        if len(entry) == 40 and not os.path.exists(entry):
            try:
                if len(zmq.utils.z85.decode(entry)) == 32:
                    keys.add(entry.encode("ascii"))
                    continue
            except (ValueError, KeyError, UnicodeEncodeError):
                pass
        keys.add(load_key_file(entry, secret=False)[0])
    return frozenset(keys)


class _AllowList:
    """ZAP credentials provider: a client gets in when its public key is in ``keys``."""

    def __init__(self, keys: frozenset[bytes]):
        self.keys = keys
        self.refused: set[bytes] = set()  # keys warned about (once each; bounded)

    def callback(self, domain: str, key: bytes) -> bool:
        import zmq.utils.z85

        z85 = zmq.utils.z85.encode(key) if len(key) == 32 else bytes(key)  # pyzmq hands it over in Z85
        allowed = z85 in self.keys
        if not allowed and z85 not in self.refused and len(self.refused) < 1000:
            self.refused.add(z85)
            log.warning("CURVE: refused a client with public key %s (not in [security] allowed_clients)",
                        z85.decode(errors="replace"))
        return allowed


def secure_server(context, sock, settings: SecuritySettings | None, endpoint: str, bind: bool, what: str):
    """Make ``sock`` (not yet bound/connected) a CURVE server per ``settings``; its authenticator
    (stop it when the socket closes), or None. Without CURVE a network bind is a ValueError unless
    ``allow_insecure_remote``."""
    settings = settings or SecuritySettings()
    if not settings.curve:
        if bind and not is_loopback(endpoint):
            if not settings.allow_insecure_remote:
                raise ValueError(insecure_message(what, endpoint))
            log.warning("%s %s is open to the network without CURVE ([security] allow_insecure_remote)", what, endpoint)
        return None
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = server_keys(settings)
    auth = ThreadAuthenticator(context)
    try:
        auth.start()
        auth.configure_curve_callback("*", credentials_provider=_AllowList(allowed_keys(settings)))
    except zmq.ZMQError:  # this context has its authenticator already (same settings: one daemon)
        auth.stop()
        auth = None
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def secure_client(sock, server_public_key: str, client_secret_key: str) -> None:
    """Make ``sock`` a CURVE client of the daemon: its public key file (or Z85 key) and this client's
    secret key file (``stmwatch keys generate DIR``: DIR/server.key, DIR/client.key_secret)."""
    server = server_public_key.encode() if len(server_public_key) == 40 and not os.path.exists(server_public_key) \
        else load_key_file(server_public_key, secret=False)[0]
    public, secret = load_key_file(client_secret_key, secret=True)
    sock.curve_serverkey = server
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def client_socket(context, kind: int, settings: SecuritySettings | None = None, server_key: str | None = None,
                  client_key: str | None = None):
    """A socket of ``kind`` for a client of the daemon: a CURVE client when keys are given
    (``server_key``/``client_key``), else from ``settings`` (the daemon's public key from its
    ``secret_key`` file, ``client_secret_key``) when ``settings.curve``."""
    sock = context.socket(kind)
    if server_key is None and settings is not None and settings.curve and settings.secret_key:
        server_key = settings.secret_key  # a certificate's secret file holds its public key too
    if client_key is None and settings is not None and settings.curve:
        client_key = settings.client_secret_key or None
    if server_key or client_key:
        if not (server_key and client_key):
            sock.close(0)
            raise ValueError("CURVE needs both the daemon's public key (--server-key) and this client's secret "
                             "key (--client-key)")
        try:
            secure_client(sock, server_key, client_key)
        except ValueError:
            sock.close(0)
            raise
    return sock


def insecure_message(what: str, endpoint: str) -> str:
    return (f"{what} {endpoint!r} is reachable from the network without CURVE: anyone there could read it "
            "(and write into a stream). Set [security] curve = true with keys from `stmwatch keys generate DIR`, "
            "bind to 127.0.0.1, or set [security] allow_insecure_remote = true")
