"""``stmwatch query scans|defects|counts``: what the daemon has stored."""
from __future__ import annotations

import datetime as dt
import re
import sys

HELP = "list scans, defects or defect counts from the database"
DESCRIPTION = """Query the database the daemon writes (--db, else [daemon] database of --config).

  scans    one row per scan: id, path, status, error, warnings, n_defects, surface, times, geometry ...
  defects  one row per defect: its scan, label, score, pixels and scanner-frame metres
  counts   defects per label: label, n

--since/--until bound the processing time: ISO dates or times (UTC; '2026-11-25',
'2026-11-25T10:00') or an age ('30m', '2h', '1d'). --label keeps scans with at least one defect of
that label (scans) or defects of that label. --format json prints a list of objects keyed by
column name; csv has a header row; hdf5 (needs --out FILE and h5py: pip install 'stmwatch[hdf5]')
writes the group /<kind> of an HDF5 file, one dataset per column with its units (HDF5, not
Parquet: h5py needs only numpy, pyarrow is a ~40 MB wheel; MATLAB, Igor and HDFView open it).

--geometry (defects) adds each defect's scan geometry: status, acquired, columns, rows,
range_x_m, range_y_m, offset_x_m, offset_y_m, angle_deg, direction -- with x_px, y_px (display
frame, row 0 at top) and x_m, y_m (scanner frame) that places every defect in its scan.
--out FILE writes the result to FILE instead of standard output.

  stmwatch query defects --geometry --format csv --out defects.csv
  stmwatch query defects --geometry --format hdf5 --out defects.h5"""

KINDS = ("scans", "defects", "counts")
TABLE_COLUMNS = {
    "scans": ("id", "path", "status", "n_defects", "surface", "processed", "error", "warnings"),
    "defects": ("id", "scan_id", "label", "score", "x_px", "y_px", "x_m", "y_m", "path"),
    "counts": ("label", "n"),
}


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=KINDS, help="what to list")
    parser.add_argument("--since", metavar="WHEN", help="processed at or after (ISO time UTC, or age: 2h)")
    parser.add_argument("--until", metavar="WHEN", help="processed before (ISO time UTC, or age)")
    parser.add_argument("--label", help="defect label")
    parser.add_argument("--surface", help="surface key (si001h, ge001, tio2110)")
    parser.add_argument("--status", choices=("ok", "partial", "failed"), help="scan status")
    parser.add_argument("--format", choices=("table", "json", "csv", "hdf5"), default="table")
    parser.add_argument("--geometry", action="store_true", help="defects: add each scan's geometry columns")
    parser.add_argument("--out", metavar="FILE", help="write to FILE (needed for hdf5) instead of standard output")
    parser.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default: [daemon] database)")
    parser.add_argument("--config", metavar="FILE", help="config.toml for [daemon] database")


def parse_when(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO date/time (naive = UTC) or an age ``N[smhd]`` before ``now`` → naive UTC datetime."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO date/time nor an age like 30m, 2h, 1d") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def rows_for(kind: str, db, filters, geometry: bool = False) -> list[dict]:
    if kind == "defects":
        return db.defects(filters, geometry=geometry)
    return {"scans": db.scans, "counts": db.counts}[kind](filters)


def run(args) -> int:
    from stmwatch.daemon.config import ConfigError, load_config
    from stmwatch.daemon.db import Database, DatabaseError, Filters
    from stmwatch.daemon.dburl import require_existing_sqlite

    if args.format == "hdf5" and not args.out:
        print("error: --format hdf5 writes a file: give --out FILE", file=sys.stderr)
        return 2
    if args.geometry and args.kind != "defects":
        print("error: --geometry applies to 'query defects'", file=sys.stderr)
        return 2
    try:
        url = args.db or load_config(args.config).daemon.database
        filters = Filters(since=_when("--since", args.since), until=_when("--until", args.until),
                          label=args.label, surface=args.surface, status=args.status)
        require_existing_sqlite(url)
        db = Database(url)
    except (ConfigError, DatabaseError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        rows = rows_for(args.kind, db, filters, args.geometry)
    finally:
        db.close()
    columns = list(rows[0]) if rows else list(TABLE_COLUMNS[args.kind])
    if args.format == "hdf5":
        from stmwatch.daemon.export import write_hdf5

        try:
            write_hdf5(rows, columns, args.out, args.kind)
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{len(rows)} {args.kind} -> {args.out} (HDF5 group /{args.kind})", file=sys.stderr)
        return 0
    if args.out:
        try:
            with open(args.out, "w", newline="", encoding="utf-8") as fh:
                _print(args, rows, columns, fh)
        except OSError as exc:
            print(f"error: {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"{len(rows)} {args.kind} -> {args.out}", file=sys.stderr)
        return 0
    try:
        _print(args, rows, columns, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


def _when(option: str, text: str | None):
    """:func:`parse_when` of ``text`` given to ``option`` (None when not given); its errors name the option."""
    if not text:
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise ValueError(f"{option} {exc}") from None


def _print(args, rows: list[dict], columns: list[str], out) -> None:
    """``rows`` as a table, JSON or CSV on ``out``."""
    import csv
    import json

    if args.format == "json":
        print(json.dumps(rows, indent=1), file=out)
    elif args.format == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"{args.kind} ({len(rows)})", title_justify="left")
        for column in TABLE_COLUMNS[args.kind]:
            table.add_column(column, overflow="fold")
        for row in rows:  # Text: a path or message with [brackets] is not rich markup
            table.add_row(*(Text(_cell(row.get(c))) for c in TABLE_COLUMNS[args.kind]))
        Console(file=out, width=None if out.isatty() else 240).print(table)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    if isinstance(value, str) and len(value) > 19 and value[10:11] == "T":
        return value[:19].replace("T", " ")  # an ISO time, to the second
    return str(value)
