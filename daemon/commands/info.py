"""``stmwatch info FILE...``: a scan's geometry and channels."""
from __future__ import annotations

import json
import sys

HELP = "print the geometry and channels of .sxm files"
DESCRIPTION = """Print each scan's geometry (pixels, range, offset, angle, direction) and its channels.

With --json, one JSON object per file (JSON Lines). A file that cannot be read gives one line
on stderr; the other files are still printed and the exit code is 2."""


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".sxm files")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")


def describe(scan) -> dict:
    """The JSON form of a scan's geometry and channels."""
    return {
        "file": str(scan.source),
        **scan.geometry(),
        "partial": scan.partial,
        "channels": [{"name": c.name, "unit": c.unit, "directions": c.directions} for c in scan.channels],
    }


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from stmwatch.drivers.sxm import ScanReadError, read_sxm

    console = Console()
    failed = False
    for path in args.files:
        try:
            scan = read_sxm(path)
        except ScanReadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        if args.json:
            print(json.dumps(describe(scan)), flush=True)
            continue
        nx, ny = scan.pixels
        table = Table(title=str(scan.source), show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        table.add_row("pixels", f"{nx} x {ny} (columns x rows)")
        table.add_row("range", f"{scan.range_m[0] * 1e9:.4g} x {scan.range_m[1] * 1e9:.4g} nm")
        table.add_row("offset", f"({scan.offset_m[0] * 1e9:.4g}, {scan.offset_m[1] * 1e9:.4g}) nm")
        table.add_row("angle", f"{scan.angle_deg:g} deg (clockwise)")
        table.add_row("direction", scan.direction)
        table.add_row("bias", "-" if scan.bias_v is None else f"{scan.bias_v:g} V")
        table.add_row("acquired", str(scan.acquired or "-"))
        table.add_row("partial", f"yes: {scan.nan_rows} of {ny} lines missing" if scan.partial else "no")
        for ch in scan.channels:
            table.add_row(f"channel {ch.name}", f"{ch.unit}, {' + '.join(ch.directions)}")
        console.print(table)
    return 2 if failed else 0
