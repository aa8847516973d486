"""``stmwatch support add|list``: the labelled crops the few-shot classifier compares defects with."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HELP = "label a new defect class from one example in a scan, or list a support set"
DESCRIPTION = """A support set is a folder <DIR>/<class>/*.npy of (2, 32, 32) crops at the model scale; the
classifier names each defect after the nearest class (or 'unknown').

  stmwatch support add --surface si001h --label my_defect --scan scan.sxm --at 120.5,88
cuts the crop centred on scan pixel (row 120.5, column 88) -- display frame, as 'process --json'
prints y_px, x_px -- through the same preprocessing the daemon applies (so at 0.1 nm/px whatever
the scan's size), and saves it as a new example of the class.

--support DIR: the support folder of that surface (default: [models] support of --config, else
~/.local/share/stmwatch/support/<surface>, which starts as a copy of the shipped set). Point
'[models] support' (or 'process --support') at it to use it."""

USER_SUPPORT = Path("~/.local/share/stmwatch/support")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add one labelled example cut from a scan")
    add.add_argument("--surface", required=True, help="si001h | ge001 | tio2110")
    add.add_argument("--label", required=True, help="class name (a new or an existing class)")
    add.add_argument("--scan", required=True, metavar="FILE", help=".sxm file with the example")
    add.add_argument("--at", required=True, metavar="ROW,COL", help="defect centre, scan display-frame pixels")
    add.add_argument("--support", metavar="DIR", help="support folder of the surface (see above)")
    add.add_argument("--config", metavar="TOML", help="config file (for [models] support and [preprocess])")
    show = sub.add_parser("list", help="the classes of a support set and their example counts")
    show.add_argument("--surface", required=True)
    show.add_argument("--support", metavar="DIR")
    show.add_argument("--config", metavar="TOML")


def support_folder(surface: str, explicit: str | None, config) -> Path:
    """The support folder to write to (see DESCRIPTION); a fresh user folder starts as a copy of
    the shipped set of ``surface``."""
    if explicit:
        return Path(explicit).expanduser()
    if config is not None and config.models.support:
        return Path(config.models.support).expanduser()
    from stmwatch.models.fewshot.classifier import SUPPORT

    folder = USER_SUPPORT.expanduser() / surface
    if not folder.exists() and (SUPPORT / surface).is_dir():
        shutil.copytree(SUPPORT / surface, folder)
    return folder


def cut_crop(scan, surface: str, row: float, col: float, preprocess=None):
    """The ``(2, 32, 32)`` classifier crop centred on scan display pixel ``(row, col)``: the scan
    is prepared as for the models, the position mapped to model pixels with ``Prepared.from_scan``
    and cut with the segmenter's own ``crops_at``. Returns ``(crop, (model_row, model_col))``."""
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.segment import crops_at

    prepared = prepare(scan, surface, preprocess)
    r, c = prepared.from_scan(row, col)
    return crops_at(prepared.image, [float(r)], [float(c)])[0], (float(r), float(c))


def run(args) -> int:
    import numpy as np

    config = None
    if args.config:
        from stmwatch.daemon.config import load_config

        config = load_config(args.config)
    folder = support_folder(args.surface, args.support, config)
    if args.action == "list":
        from stmwatch.models.fewshot.crops import load_surface

        for label, n in load_surface(folder).counts().items():
            print(f"{label}\t{n}")
        return 0

    from stmwatch.drivers.sxm import ScanReadError, read_sxm
    from stmwatch.models.surfaces import get_surface

    get_surface(args.surface)  # a clear error for an unknown surface
    try:
        row, col = (float(v) for v in args.at.split(","))
    except ValueError:
        raise SystemExit(f"--at must be ROW,COL (scan pixels), not {args.at!r}") from None
    try:
        scan = read_sxm(args.scan)
    except ScanReadError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not (-0.5 <= row <= scan.shape[0] - 0.5 and -0.5 <= col <= scan.shape[1] - 0.5):
        raise SystemExit(f"--at {row},{col} is outside the {scan.shape[0]} x {scan.shape[1]} scan")
    crop, (mr, mc) = cut_crop(scan, args.surface, row, col, getattr(config, "preprocess", None))
    target = folder / args.label
    target.mkdir(parents=True, exist_ok=True)
    n = len(list(target.glob("*.npy")))
    path = target / f"{Path(args.scan).stem}_r{row:g}_c{col:g}_{n:03d}.npy"
    np.save(path, crop)
    print(f"added {path} (model pixel {mr:.1f}, {mc:.1f}); class {args.label} has {n + 1} example(s)")
    return 0
