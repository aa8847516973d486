"""``stmwatch support add|list``: the labelled crops the few-shot classifier compares defects with."""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from ._args import at_least, surface_key

HELP = "label defect classes from examples clicked in a scan, list a support set, or suggest where to click"
DESCRIPTION = """A support set is a folder <DIR>/<class>/*.npy of (2, 32, 32) crops at the model scale; the
classifier names each defect after the nearest class (or 'unknown').

  stmwatch support add --surface si001h --label my_defect --scan scan.sxm --at 120.5,88
cuts the crop centred on scan pixel (row 120.5, column 88) -- display frame, as 'process --json'
prints y_px, x_px -- through the same preprocessing the daemon applies (so at 0.1 nm/px whatever
the scan's size), and saves it as a new example of the class. Several examples at once: repeat --at, or
--at "120.5,88;40,17".

  stmwatch support suggest --surface si001h --scan scan.sxm [--n 10]
lists the defects of the scan the classifier is least sure of (smallest margin between its two
nearest classes): where a second click helps most. Many defects look different in filled (-)
and empty (+) states: each click records its scan's bias, a scan is labelled with the clicks of
its own polarity where a class has some, and suggest says which classes have none there yet.

--support DIR: the support folder of that surface (default: [models] support of --config, else
~/.local/share/stmwatch/support/<surface>, which starts as a copy of the shipped set). Point
'[models] support' (or 'process --support') at it to use it."""

USER_SUPPORT = Path("~/.local/share/stmwatch/support")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add one labelled example cut from a scan")
    add.add_argument("--surface", required=True, type=surface_key, help="si001h | ge001 | tio2110")
    add.add_argument("--label", required=True, help="class name (a new or an existing class)")
    add.add_argument("--scan", required=True, metavar="FILE", help=".sxm file with the example")
    add.add_argument("--at", required=True, action="append", metavar="ROW,COL",
                     help="defect centre, scan display-frame pixels (repeat, or ROW,COL;ROW,COL for several)")
    add.add_argument("--support", metavar="DIR", help="support folder of the surface (see above)")
    add.add_argument("--config", metavar="TOML", help="config file (for [models] support and [preprocess])")
    hint = sub.add_parser("suggest", help="the defects of a scan the classifier is least sure of")
    hint.add_argument("--surface", required=True, type=surface_key)
    hint.add_argument("--scan", required=True, metavar="FILE", help=".sxm file")
    hint.add_argument("--support", metavar="DIR")
    hint.add_argument("--config", metavar="TOML")
    hint.add_argument("--models", metavar="BUNDLE", help="a model bundle (stmwatch adapt) instead of the shipped models")
    hint.add_argument("--n", type=at_least(1), default=10, help="how many to list (default 10)")
    hint.add_argument("--json", action="store_true", help="one JSON object per defect")
    show = sub.add_parser("list", help="the classes of a support set and their example counts")
    show.add_argument("--surface", required=True, type=surface_key)
    show.add_argument("--support", metavar="DIR")
    show.add_argument("--config", metavar="TOML")


LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a class is a folder of the support set: a plain name


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
    """See :func:`stmwatch.models.clicks.cut_crop` (kept here for callers of the old place)."""
    from stmwatch.models.clicks import cut_crop as cut

    return cut(scan, surface, row, col, preprocess)


def _suggest(args, config, folder) -> int:
    import json

    from stmwatch.drivers.sxm import ScanReadError, read_sxm
    from stmwatch.models.clicks import least_sure, unclicked_at_polarity
    from stmwatch.models.fewshot.crops import bias_polarity
    from stmwatch.models.load import load_analyser

    if config is None:
        from stmwatch.daemon.config import load_config

        config = load_config(None)
    if getattr(args, "models", None):
        import dataclasses

        config = dataclasses.replace(config, models=dataclasses.replace(config.models, bundle=args.models))
    try:
        scan = read_sxm(args.scan)
        analyser = load_analyser(config, surface=args.surface, support=folder)
    except (ScanReadError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if analyser.classifier is None:
        raise SystemExit(f"error: no few-shot classifier with support set {folder}")
    rows = least_sure(analyser.analyse(scan), analyser.classifier, args.n)
    unclicked = unclicked_at_polarity(analyser.classifier.support, scan.bias_v)
    if unclicked:  # stderr: stdout stays a table (or JSON lines)
        translated = bias_polarity(scan.bias_v) in getattr(analyser.classifier, "polarity_maps", {})
        advice = ("their look here is translated from those clicks (the classifier's polarity maps); a click of "
                  "each here may still help" if translated else "a click of each here helps most")
        print(f"note: {', '.join(unclicked)} clicked only at the other bias polarity; this scan is at "
              f"{scan.bias_v:+g} V: {advice}", file=sys.stderr)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("row\tcol\tlabel\tp\tsecond\tp_second\tmargin")
    for r in rows:
        print(f"{r['row']:.1f}\t{r['col']:.1f}\t{r['label']}\t{r['p']:.2f}\t{r['second']}\t{r['p_second']:.2f}\t{r['margin']:.2f}")
    return 0


def run(args) -> int:
    config = None
    if args.config:
        from stmwatch.daemon.config import load_config

        config = load_config(args.config)
    if args.action == "add" and not LABEL.fullmatch(args.label):
        raise SystemExit(f"error: --label {args.label!r}: a class name is letters, digits, '_', '.' and '-' "
                         "(it names a folder of the support set)")
    folder = support_folder(args.surface, args.support, config)
    if args.action == "list":
        from stmwatch.models.fewshot.crops import load_surface

        try:
            support = load_surface(folder)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: support set {folder}: {exc}") from None
        print("class\texamples\tfilled (-)\tempty (+)\tbias unknown")
        for label, n in support.counts().items():
            polarity = support.polarity(label)
            print(f"{label}\t{n}\t{int((polarity < 0).sum())}\t{int((polarity > 0).sum())}\t{int((polarity == 0).sum())}")
        return 0

    if args.action == "suggest":
        return _suggest(args, config, folder)

    from stmwatch.drivers.sxm import ScanReadError, read_sxm
    from stmwatch.models.clicks import add_examples, parse_points, points_without_data
    from stmwatch.models.fewshot.crops import bias_polarity
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.segment import too_coarse
    from stmwatch.models.settings import ModelSettings

    try:
        points = parse_points(args.at)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    try:
        scan = read_sxm(args.scan)
    except ScanReadError as exc:
        raise SystemExit(f"error: {exc}") from None
    # as process: such a scan's defects are not segmented either
    if coarse := too_coarse(scan, (config.models if config is not None else ModelSettings()).max_nm_per_px):
        raise SystemExit(f"error: {args.scan}: {coarse} there, so no example is cut")
    try:
        prepared = prepare(scan, args.surface, getattr(config, "preprocess", None))
        if empty := points_without_data(prepared, points):
            raise ValueError(f"--at {';'.join(f'{r:g},{c:g}' for r, c in empty)}: no data there (lines not acquired)")
        added = add_examples(folder, args.label, scan, args.surface, points, stem=Path(args.scan).stem,
                             prepared=prepared)
    except ValueError as exc:
        raise SystemExit(f"error: {args.scan}: {exc}") from None
    total = len(list((folder / args.label).glob("*.npy")))
    sign = bias_polarity(scan.bias_v)
    states = f"{scan.bias_v:+g} V, {'empty' if sign > 0 else 'filled'} states" if sign else "bias unknown"
    for path, (mr, mc) in added:
        print(f"added {path} (model pixel {mr:.1f}, {mc:.1f}; {states})")
    print(f"class {args.label} has {total} example(s)")
    if not args.support and not (config is not None and config.models.support):
        print(f"use it: stmwatch process FILE --support {folder}   or   [models] support = \"{folder}\" "
              "(until then the shipped set is used)")
    return 0
