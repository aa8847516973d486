"""ZeroMQ endpoints, checked before use: the stream driver's and the daemon's publishers'.

:func:`check_endpoint` checks an endpoint's form at config time (``tcp://HOST:PORT`` with a port
1-65535 or ``*`` when binding, ``ipc://PATH``, ``inproc://NAME``); :func:`resolve_endpoint` checks
at start that a ``tcp`` host to connect to exists (ZeroMQ itself connects in the background and
would retry an unknown host forever without a word). :func:`is_loopback` tells whether a bound
endpoint stays on this PC.
"""
from __future__ import annotations

import ipaddress
import socket

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
