"""Turn the daemon's overlays into a target list for lithography or atom manipulation.

    python examples/retarget.py --endpoint tcp://127.0.0.1:5556 --label dangling_bond --out targets.csv
    # a daemon with [security] curve = true (keys from `stmwatch keys generate DIR`):
    python examples/retarget.py --endpoint tcp://stm-pc:5556 --server-key DIR/server.key --client-key DIR/client.key_secret

Each overlay (one per processed scan) carries every defect's position in the scanner frame --
metres, x right and y up, with the frame's offset and rotation already applied -- so a target can be
sent to the tip as it is (e.g. Nanonis ``FolMe.XYPosSet``). This client keeps the defects with the
wanted labels and score, drops those closer than ``--keep-out`` nm to one already chosen (a
lithography spot needs room), and orders them as a short tip path (nearest neighbour from
``--start``). It prints each list and appends it to ``--out`` as CSV. With ``--skip-warned`` a scan
with warnings (a double tip above all: the tip needs conditioning before it writes) gives no targets.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path


def targets_from_overlay(message: dict, labels: set[str] | None = None, min_score: float = 0.0,
                         keep_out_m: float = 0.0, start_m: tuple[float, float] | None = None,
                         skip_warned: bool = False) -> list[dict]:
    """The overlay's defects to visit, in tip order: ``[{"x_m", "y_m", "label", "score", "order"}]``.

    ``labels`` None keeps every label; ``keep_out_m`` drops a defect within that distance of one
    already kept (higher scores first); the order is nearest neighbour from ``start_m`` (default:
    the frame centre, ``geometry.offset_m``); ``skip_warned`` gives none for a scan with warnings.
    """
    if message.get("status") == "failed" or (skip_warned and message.get("warnings")):
        return []
    chosen: list[dict] = []
    candidates = [d for d in message.get("defects", [])
                  if (labels is None or d["label"] in labels) and d["score"] >= min_score]
    for d in sorted(candidates, key=lambda d: -d["score"]):
        if all(math.dist((d["x_m"], d["y_m"]), (c["x_m"], c["y_m"])) >= keep_out_m for c in chosen):
            chosen.append({"x_m": d["x_m"], "y_m": d["y_m"], "label": d["label"], "score": d["score"]})
    here = start_m or tuple((message.get("geometry") or {}).get("offset_m") or (0.0, 0.0))
    ordered = []
    while chosen:
        nearest = min(chosen, key=lambda c: math.dist(here, (c["x_m"], c["y_m"])))
        chosen.remove(nearest)
        nearest["order"] = len(ordered)
        ordered.append(nearest)
        here = (nearest["x_m"], nearest["y_m"])
    return ordered


def curve_client(sock, server_key: Path | None, client_key: Path | None) -> None:
    """Make ``sock`` a CURVE client: the daemon's public key file and this client's secret key file
    (zmq.auth certificates, as ``stmwatch keys generate`` writes them)."""
    import zmq.auth

    if not (server_key and client_key):
        raise SystemExit("error: CURVE needs both --server-key and --client-key")
    sock.curve_serverkey = zmq.auth.load_certificate(str(server_key))[0]
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(str(client_key))


def main(argv: list[str] | None = None) -> int:
    import zmq

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="the daemon's overlay publisher")
    parser.add_argument("--label", action="append", help="defect label to target (repeatable; default all)")
    parser.add_argument("--min-score", type=float, default=0.5, help="lowest classifier/segmenter score")
    parser.add_argument("--keep-out", type=float, default=1.0, help="least distance between targets, nm")
    parser.add_argument("--out", type=Path, help="append targets to this CSV file")
    parser.add_argument("--count", type=int, default=0, help="stop after this many scans (0 = never)")
    parser.add_argument("--skip-warned", action="store_true", help="no targets from a scan with warnings "
                        "(e.g. a double tip)")
    parser.add_argument("--server-key", type=Path, help="CURVE: the daemon's public key file (DIR/server.key)")
    parser.add_argument("--client-key", type=Path, help="CURVE: this client's secret key file (DIR/client.key_secret)")
    args = parser.parse_args(argv)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    if args.server_key or args.client_key:
        curve_client(sock, args.server_key, args.client_key)
    sock.setsockopt(zmq.SUBSCRIBE, b"overlay")
    sock.connect(args.endpoint)
    print(f"waiting for overlays on {args.endpoint}", file=sys.stderr)
    n = 0
    try:
        while not args.count or n < args.count:
            frames = sock.recv_multipart()
            message = json.loads(frames[1])
            n += 1
            targets = targets_from_overlay(message, set(args.label) if args.label else None, args.min_score,
                                           args.keep_out * 1e-9, skip_warned=args.skip_warned)
            print(f"{message['file']}: {len(targets)} target(s)")
            for warning in message.get("warnings") or []:
                print(f"  warning: {warning}")
            for t in targets:
                print(f"  {t['order']:3d}  x = {t['x_m'] * 1e9:9.3f} nm  y = {t['y_m'] * 1e9:9.3f} nm  {t['label']}")
            if args.out and targets:
                new = not args.out.exists()
                with args.out.open("a", newline="") as fh:
                    writer = csv.DictWriter(fh, ["scan_uid", "file", "order", "x_m", "y_m", "label", "score"])
                    if new:
                        writer.writeheader()
                    for t in targets:
                        writer.writerow({"scan_uid": message["scan_uid"], "file": message["file"], **t})
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
