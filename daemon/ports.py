"""The ZeroMQ ports a daemon binds, checked before it starts: which is taken, and by which setting.

Two copies of stmwatch on one PC (two microscopes, a test copy) collide on the default ports
(``[daemon] publish`` 5556, ``[live] publish`` 5558, ``[stream] endpoint`` 5557 with ``bind``).
:func:`port_problems` names the port and the setting, before the models are loaded.
"""
from __future__ import annotations

import socket

from stmwatch.drivers.wire import split_tcp

HINT = ("another stmwatch (or program) on this PC holds it: give each copy its own ports "
        "([daemon] publish, [live] publish, [stream] endpoint)")


def bound_endpoints(config) -> list[tuple[str, str]]:
    """``(setting, endpoint)`` for every endpoint the daemon of ``config`` binds."""
    out = []
    if config.daemon.publish:
        out.append(("[daemon] publish", config.daemon.publish))
    live = getattr(config, "live", None)
    if live is not None and live.publish:  # bound whenever set (the heartbeat), live segmentation or not
        out.append(("[live] publish", live.publish))
    if config.daemon.driver == "stream" and config.stream.bind:
        out.append(("[stream] endpoint", config.stream.endpoint))
    return out


def tcp_address(endpoint: str) -> tuple[str, int] | None:
    """``tcp://HOST:PORT`` → ``(host, port)`` to bind; None for a wildcard port or another transport."""
    if not endpoint.startswith("tcp://"):
        return None
    try:
        host, port = split_tcp(endpoint)
    except ValueError:  # no HOST:PORT: the config check says so
        return None
    if not port.isdigit() or int(port) == 0:  # "*": any free port
        return None
    host = host.lower()
    return {"*": "0.0.0.0", "": "0.0.0.0", "localhost": "127.0.0.1"}.get(host, host), int(port)


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (``Address already in use``), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def port_problems(config) -> list[str]:
    """One sentence per port the daemon of ``config`` could not bind: two of its settings on one
    port, or a port another process holds."""
    problems, seen = [], {}
    for setting, endpoint in bound_endpoints(config):
        address = tcp_address(endpoint)
        if address is None:
            continue
        port = address[1]
        if port in seen:
            problems.append(f"port {port} is set twice: {seen[port][0]} = {seen[port][1]!r} and "
                            f"{setting} = {endpoint!r}; give each its own port")
            continue
        seen[port] = (setting, endpoint)
        why = port_taken(*address)
        if why:
            problems.append(f"port {port} is taken ({why}): {setting} = {endpoint!r}; {HINT}")
    return problems
