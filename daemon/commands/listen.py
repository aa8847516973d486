"""``stmwatch listen``: print the overlays the daemon publishes."""
from __future__ import annotations

import sys

HELP = "print the overlay messages the daemon publishes (ZeroMQ SUB)"
DESCRIPTION = """Subscribe to the daemon's overlays and print one line per scan: file, status, the
scan's warnings (a double tip, ...) and each defect's label and scanner-frame position (nm).
--json prints each message's JSON instead (one per line); --png DIR saves attached PNGs there.
Stops after --count messages or --timeout seconds of silence, else on Ctrl-C."""


def add_arguments(parser) -> None:
    parser.add_argument("--endpoint", help="the daemon's publish endpoint (default: [daemon] publish)")
    parser.add_argument("--config", metavar="FILE", help="config.toml for [daemon] publish")
    parser.add_argument("--json", action="store_true", help="print each message as JSON (one per line)")
    parser.add_argument("--png", metavar="DIR", help="save attached overlay PNGs into DIR (the daemon attaches "
                                                     "them with [daemon] publish_png = true; off by default)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages (0 = never)")
    parser.add_argument("--timeout", type=float, default=0.0, help="stop after this many seconds of silence")
    parser.add_argument("--server-key", metavar="FILE", help="CURVE: the daemon's public key (DIR/server.key "
                        "from stmwatch keys generate; default: from --config [security])")
    parser.add_argument("--client-key", metavar="FILE", help="CURVE: this client's secret key (DIR/client.key_secret; "
                        "default: [security] client_secret_key)")


def describe(message: dict) -> str:
    """One human line for an overlay message."""
    head = f"{message['file']}: {message['status']}"
    if message.get("error"):
        return f"{head} ({message['error']})"
    parts = [f"{d['label']} ({d['x_m'] * 1e9:.3f}, {d['y_m'] * 1e9:.3f}) nm" for d in message["defects"]]
    counts = ", ".join(f"{k} {v}" for k, v in message["counts"].items()) or "no defects"
    warnings = "".join(f"\n  warning: {w}" for w in message.get("warnings") or [])  # version 2 on
    return f"{head}, {counts}" + warnings + ("".join(f"\n  {p}" for p in parts))


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    import zmq

    from stmwatch.daemon.config import ConfigError, load_config
    from stmwatch.daemon.publisher import TOPIC, decode_overlay

    from stmwatch.drivers.wire import client_socket

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    endpoint = args.endpoint or config.daemon.publish
    if not endpoint:
        print("error: no endpoint: publishing is off ([daemon] publish = '')", file=sys.stderr)
        return 2
    ctx = zmq.Context()
    try:
        sock = client_socket(ctx, zmq.SUB, config.security if args.config else None,
                             getattr(args, "server_key", None), getattr(args, "client_key", None))
    except ValueError as exc:
        ctx.term()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    sock.connect(endpoint.replace("tcp://*", "tcp://127.0.0.1").replace("tcp://0.0.0.0", "tcp://127.0.0.1"))
    if not args.json:
        print(f"listening on {endpoint}", file=sys.stderr, flush=True)
    png_dir = Path(args.png) if args.png else None
    if png_dir:
        png_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    last = time.monotonic()
    try:
        while not args.count or n < args.count:
            if not sock.poll(200):
                if args.timeout and time.monotonic() - last > args.timeout:
                    break
                continue
            last = time.monotonic()
            try:
                message, png = decode_overlay(sock.recv_multipart())
            except ValueError as exc:
                print(f"skipped a message: {exc}", file=sys.stderr)
                continue
            n += 1
            print(json.dumps(message) if args.json else describe(message), flush=True)
            if png and png_dir:
                (png_dir / f"{message['scan_uid']}.png").write_bytes(png)
            elif png_dir and n == 1:  # said once: the folder would stay empty without a word
                print(f"note: the overlay came without a PNG, so {png_dir} gets none: set [daemon] publish_png = true "
                      "in the daemon's config", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        ctx.term()
    return 0
