"""``stmwatch process FILE...``: find (and name) the defects in .sxm files, once, without the daemon."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stmwatch.models.settings import BACKENDS

from ._args import at_least, first_shared_stem, surface_key

HELP = "find and label the defects in .sxm files (JSON Lines, a table, PNG overlays)"
DESCRIPTION = """Read each file, preprocess it, segment it with the UNet and (when a support set and the
few-shot classifier are available) name each defect; print the result.

--json prints one JSON object per file (JSON Lines):
  {"file", "scan": {pixels, range_m, offset_m, angle_deg, direction},
   "defects": [{x_px, y_px, x_m, y_m, label, score, area_px}], "counts": {label: n},
   "timing_ms": {read, preprocess, segment, classify, total}, "warnings": [sentence, ...]}
x_px is the column and y_px the row of the scan as read, display frame (row 0 at the top);
x_m, y_m are scanner-frame metres. Without a classifier every label is "defect".

What the operator should know about a scan (a double tip, with its offset; a scan that does not
show the configured surface; pixels too coarse to segment) follows its table as "warning: ...";
with --json it is the "warnings" list of the file's line (empty when there is nothing to say),
and also goes to stderr as "warning: FILE: ...".

A file that cannot be read gives one line on stderr; the other files are still processed and
the exit code is 2."""


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".sxm files")
    parser.add_argument("--json", action="store_true", help="one JSON object per file (JSON Lines)")
    parser.add_argument("--surface", type=surface_key, help="surface the scans show (default: [models] surface): si001h | ge001 | tio2110")
    parser.add_argument("--support", metavar="DIR", help="support set for the classifier: DIR/<class>/*.npy|png")
    parser.add_argument("--models", metavar="BUNDLE", help="a model bundle folder (stmwatch adapt) instead of "
                        "[models] bundle / the shipped models")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="inference backend (default: [models] backend)")
    parser.add_argument("--png", metavar="OUT", help="write an overlay PNG: OUT.png for one file, "
                        "else OUT is a folder and each file gives OUT/<name>.png")
    parser.add_argument("--config", metavar="TOML", help="config file (default: built-in defaults)")
    parser.add_argument("--rows", type=at_least(0), default=25, help="defects listed per file in the table (default 25)")


def result_dict(path: str, analysis) -> dict:
    """The JSON form of one file's analysis (see the command's description)."""
    return {
        "file": str(path),
        "scan": analysis.scan.geometry(),
        "defects": [d.as_dict() for d in analysis.defects],
        "counts": analysis.counts,
        "timing_ms": {k: analysis.timing_ms[k] for k in ("read", "preprocess", "segment", "classify", "total")},
        "warnings": list(analysis.warnings),
    }


def png_path(out: str, source: str, several: bool) -> Path:
    """Where the overlay of ``source`` goes: ``out`` itself for one file named ``*.png``, else
    ``out/<stem>.png``."""
    out_path = Path(out)
    if not several and out_path.suffix.lower() == ".png" and not out_path.is_dir():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        return out_path
    out_path.mkdir(parents=True, exist_ok=True)
    return out_path / f"{Path(source).stem}.png"


def _table(analysis, rows: int):
    from rich.table import Table

    scan = analysis.scan
    width_nm, height_nm = (r * 1e9 for r in scan.range_m)
    counts = ", ".join(f"{k}: {v}" for k, v in analysis.counts.items()) or "none"
    t = analysis.timing_ms
    table = Table(title=f"{scan.source}  {width_nm:.4g} x {height_nm:.4g} nm, {scan.pixels[0]} x {scan.pixels[1]} px"
                        f"{'  (partial)' if scan.partial else ''}",
                  caption=f"{len(analysis.defects)} defects ({counts}); read {t['read']:.0f} ms, preprocess "
                          f"{t['preprocess']:.0f} ms, segment {t['segment']:.0f} ms, classify {t['classify']:.0f} ms, "
                          f"total {t['total']:.0f} ms", title_justify="left", caption_justify="left")
    for name in ("#", "x_px", "y_px", "x (nm)", "y (nm)", "label", "score", "area_px"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for i, d in enumerate(analysis.defects[:rows]):
        table.add_row(str(i), f"{d.col:.1f}", f"{d.row:.1f}", f"{d.x_m * 1e9:.3f}", f"{d.y_m * 1e9:.3f}", d.label,
                      f"{d.label_score if d.label_score is not None else d.score:.2f}", f"{d.area_px:.1f}")
    if len(analysis.defects) > rows:
        table.add_row("...", "", "", "", "", f"{len(analysis.defects) - rows} more", "", "")
    return table


def run(args) -> int:
    from rich.console import Console
    from rich.text import Text

    from stmwatch.daemon.config import ConfigError, load_config
    from stmwatch.drivers.sxm import ScanReadError, naming_the_file, read_sxm
    from stmwatch.models.load import load_analyser

    if args.png and len(args.files) > 1 and (twins := first_shared_stem(args.files)):  # overlays: OUT/<stem>.png
        print(f"error: {twins[0]} and {twins[1]} have one name, and their overlays would overwrite each other in "
              f"{args.png}: process them apart", file=sys.stderr)
        return 1
    try:
        config = load_config(args.config)
        if getattr(args, "models", None):
            import dataclasses

            config = dataclasses.replace(config, models=dataclasses.replace(config.models, bundle=args.models))
        analyser = load_analyser(config, surface=args.surface, backend=args.backend, support=args.support)
    except (ConfigError, KeyError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    console = Console()
    failed = False
    several = len(args.files) > 1
    for path in args.files:
        t0 = time.perf_counter()
        try:
            scan = read_sxm(path)
            read_ms = (time.perf_counter() - t0) * 1e3
            analysis = analyser.analyse(scan, read_ms=read_ms)
        except (ScanReadError, ValueError) as exc:
            print(f"error: {naming_the_file(path, exc)}", file=sys.stderr, flush=True)
            failed = True
            continue
        if args.json:
            print(json.dumps(result_dict(path, analysis)), flush=True)
            for warning in analysis.warnings:
                print(f"warning: {path}: {warning}", file=sys.stderr, flush=True)
        else:
            console.print(_table(analysis, args.rows))
            for warning in analysis.warnings:
                console.print(Text.assemble(("warning: ", "bold yellow"), warning))
        if args.png:
            from stmwatch.models.render import overlay_png

            out = png_path(args.png, path, several)
            overlay_png(scan, analysis.defects, out, notes=analysis.warnings)
            if not args.json:
                console.print(f"overlay: {out}")
    return 2 if failed else 0
