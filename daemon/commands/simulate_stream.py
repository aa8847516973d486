"""``stmwatch simulate-stream``: a simulated microscope streaming scans over ZeroMQ, line by line."""
from __future__ import annotations

import sys

from ._args import surface_key

HELP = "stream simulated scans over ZeroMQ as a microscope would (line by line)"
DESCRIPTION = """Play simulated scans to the daemon's stream driver (protocol: stmwatch/drivers/stream/protocol.py).

By default it binds a PUB socket at --endpoint and waits for the daemon to subscribe, then sends
each scan as scan_start, one 'lines' message per line at --line-rate lines per second, and
scan_end. --frames sends each scan whole instead; --junk mixes in messages a daemon must drop."""


def add_arguments(parser) -> None:
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5557", help="where to send (default: %(default)s)")
    parser.add_argument("--socket", choices=("pub", "push"), default="pub", help="socket type (default: pub)")
    parser.add_argument("--connect", action="store_true", help="connect instead of binding")
    parser.add_argument("--topic", default="stm", help="message topic (default: %(default)s)")
    parser.add_argument("--line-rate", type=float, default=20.0, help="lines per second; 0 = as fast as possible")
    parser.add_argument("--lines-per-message", type=int, default=1, help="lines in one 'lines' message")
    parser.add_argument("--scans", type=int, default=0, help="number of scans (0 = until Ctrl-C)")
    parser.add_argument("--surface", default="si001h", type=surface_key, help="si001h | ge001 | tio2110")
    parser.add_argument("--pixels", type=int, default=128, help="pixels per side")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scan")
    parser.add_argument("--defects", type=int, default=None, help="defects per scan (default: a random density)")
    parser.add_argument("--frames", action="store_true", help="send whole frames instead of lines")
    parser.add_argument("--junk", type=int, default=0, metavar="N", help="a junk message after every N lines")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between scans")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a subscriber (pub)")
    parser.add_argument("--server-key", metavar="FILE", help="CURVE: the daemon's public key (DIR/server.key)")
    parser.add_argument("--client-key", metavar="FILE", help="CURVE: this sender's secret key (DIR/client.key_secret)")


def run(args) -> int:
    import itertools
    import time

    from stmwatch.drivers.stream.sim import StreamSimulator
    from stmwatch.models.sim.simulate import simulate_scan

    try:
        curve = (args.server_key, args.client_key) if args.server_key or args.client_key else None
        if curve and not all(curve):
            raise ValueError("CURVE needs both --server-key and --client-key")
        sim = StreamSimulator(args.endpoint, socket=args.socket, bind=not args.connect, topic=args.topic, curve=curve)
        sim.__enter__()
    except Exception as exc:
        print(f"error: cannot open {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"simulate-stream: {args.socket.upper()} on {sim.endpoint}", file=sys.stderr, flush=True)
        if not sim.wait_for_subscriber(args.wait):
            print(f"error: no subscriber within {args.wait:g} s", file=sys.stderr)
            return 1
        counter = range(args.scans) if args.scans else itertools.count()
        for i in counter:
            scan, truth = simulate_scan(args.surface, args.seed + i, pixels=(args.pixels, args.pixels),
                                        n_defects=args.defects)
            scan_id = f"sim-{args.seed + i:05d}"
            if args.frames:
                sim.send_frame(scan, scan_id, surface=args.surface)
            else:
                sim.send_scan(scan, scan_id, line_rate=args.line_rate, lines_per_message=args.lines_per_message,
                              surface=args.surface, junk_every=args.junk)
            print(f"{scan_id}: sent, {len(truth.defects)} defects in the truth", flush=True)
            if args.pause > 0:
                time.sleep(args.pause)
    except KeyboardInterrupt:
        pass
    finally:
        sim.__exit__()
    return 0
