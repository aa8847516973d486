"""``stmwatch dashboard``: the live terminal dashboard (a second terminal, or over ssh)."""
from __future__ import annotations

import sys

HELP = "live terminal dashboard: current scan, queue, last scans, defects over time, latency, errors"
DESCRIPTION = """Show what the daemon is doing, refreshed every second: the scan being processed (and the
progress of a streamed scan), queue depth and backend, the last scans with their defect counts
per label, defects per scan over time, throughput, latency (median, p95) and errors, and a
thumbnail of the last scan where the terminal shows colour.

It reads the database and listens to the daemon's publishers (endpoints from --config), so it
can run beside the daemon or anywhere that reaches them; it keeps going while the daemon restarts.
Ctrl-C quits."""


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="FILE", help="config.toml of the daemon (database and endpoints)")
    parser.add_argument("--db", metavar="URL", help="database URL (default: from the config)")
    parser.add_argument("--connect", metavar="ENDPOINT", action="append", default=None,
                        help="publisher endpoint(s) to listen to (default: the config's overlay and live ones)")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="S", help="seconds between redraws (1)")
    parser.add_argument("--once", action="store_true", help="draw one screen and exit")
    parser.add_argument("--no-thumbnail", action="store_true", help="do not draw the last scan")


def run(args) -> int:
    from stmwatch.daemon.config import ConfigError, load_config
    from stmwatch.daemon.dashboard import Dashboard, endpoints_of
    from stmwatch.daemon.db import DatabaseError
    from stmwatch.daemon.dburl import mask_logs, require_existing_sqlite

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    database = args.db or config.daemon.database
    mask_logs(database)
    try:  # the dashboard reads: a mistyped SQLite path is an error, not an empty database made there
        require_existing_sqlite(database)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    endpoints = args.connect if args.connect is not None else endpoints_of(config)
    try:
        Dashboard(database, endpoints, refresh_s=args.refresh, thumbnails=not args.no_thumbnail,
                  security=config.security).run(once=args.once)
    except KeyboardInterrupt:
        pass
    except DatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
