"""``stmwatch eval oneclick``: the operator's flow on a labelled folder -- K clicked examples per
class from the first scans, every defect of the others labelled -- scored (label accuracy of the
matched defects, detection F1). The work: :mod:`stmwatch.models.oneclick`."""
from __future__ import annotations

import json
import sys

from stmwatch.daemon.commands._args import surface_key

HELP = "one-click label accuracy and detection F1 on a folder of labelled scans"
DESCRIPTION = """Cut --shots examples of every class from the first scans of --scans (name order; the truth
files of 'stmwatch simulate' say where, and only clear examples -- 2 nm from the edge, apart from
other defects -- are clicked; with --per-polarity, at each sign of the sample bias) through
'support add''s code, then label every defect of the later scans with the models on that support
set and score them: label accuracy of the defects matched within --radius-nm, and detection
precision, recall and F1 (95 % interval by resampling scans).
Which example was clicked matters: --repeats R draws R sets of clicks at random among the clear
examples of the first half of the scans and scores the second half with each.

  stmwatch simulate --style foreign --surface si001h --n 24 --out foreign/si
  stmwatch eval oneclick --scans foreign/si --surface si001h [--models BUNDLE] [--json]"""


def add_arguments(parser) -> None:
    from stmwatch.models.eval_segment import MATCH_RADIUS_NM

    parser.add_argument("--scans", required=True, metavar="DIR", help="folder of NAME.sxm + NAME.truth.json")
    parser.add_argument("--surface", required=True, type=surface_key, help="si001h | ge001 | tio2110")
    parser.add_argument("--models", metavar="BUNDLE", help="a model bundle (stmwatch adapt); default the shipped models")
    parser.add_argument("--shots", type=int, default=1, help="examples clicked per class (default 1)")
    parser.add_argument("--per-polarity", action="store_true",
                        help="click --shots per class at each bias polarity of the scans (filled and empty states)")
    parser.add_argument("--repeats", type=int, default=1, metavar="R",
                        help="R > 1: draw R sets of clicks at random in the first half of the scans, score the "
                             "second half each time, report the mean (default 1: the first clear examples)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn clicks (--repeats)")
    parser.add_argument("--radius-nm", type=float, default=MATCH_RADIUS_NM, help="match radius (nm, default 0.5)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), help="inference backend")
    parser.add_argument("--config", metavar="TOML", help="config file ([models], [preprocess])")
    parser.add_argument("--keep-support", metavar="DIR",
                        help="keep the clicked support set in DIR (empty or new: one holding clicks is refused)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def run(args) -> int:
    import dataclasses

    from rich.progress import Progress

    from stmwatch.daemon.config import ConfigError, load_config
    from stmwatch.models.load import load_analyser
    from stmwatch.models.oneclick import check_support_dir, evaluate_oneclick

    try:  # before any work: a --keep-support of an earlier run would add its clicks to this run's
        check_support_dir(args.keep_support, args.surface, args.repeats)
    except ValueError as exc:
        print(f"stmwatch eval oneclick: {exc}", file=sys.stderr)
        return 2
    if args.shots < 1 or args.repeats < 1:
        print("stmwatch eval oneclick: --shots and --repeats must be 1 or more", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        if args.models:
            config = dataclasses.replace(config, models=dataclasses.replace(config.models, bundle=args.models))
        if config.models.bundle:  # checked now, not after the clicks were cut
            from stmwatch.models.load import with_bundle

            with_bundle(config.models, args.surface)
    except (ConfigError, ValueError) as exc:  # a BundleError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task(f"one-click {args.surface}", total=None)
        try:
            result = evaluate_oneclick(
                args.scans, args.surface, lambda folder: load_analyser(config, args.surface, args.backend, folder),
                shots=args.shots, radius_nm=args.radius_nm, preprocess=config.preprocess,
                support_dir=args.keep_support, progress=lambda: bar.advance(task), per_polarity=args.per_polarity,
                repeats=args.repeats, seed=args.seed)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result))
        return 0
    clicks = f"{args.shots}-shot per polarity" if args.per_polarity else f"{args.shots}-shot"
    print(f"{args.surface}: {clicks} ({result['clicks']} clicks) from {result['support_scans']} scan(s), scored on {result['eval_scans']} "
          f"scans: label accuracy {result['label_accuracy']:.3f} ({result['label_accuracy_ci95'][0]:.3f}-"
          f"{result['label_accuracy_ci95'][1]:.3f}) over {result['matched']} matched defects; detection "
          f"F1 {result['f1']:.3f} ({result['f1_ci95'][0]:.3f}-{result['f1_ci95'][1]:.3f}), precision "
          f"{result['precision']:.3f}, recall {result['recall']:.3f} at {result['radius_nm']} nm "
          f"({result['true']} true, {result['found']} found)")
    if args.repeats > 1:
        low, high = result["label_accuracy_range95"]
        print(f"  over {result['repeats']} draws of the clicks: label accuracy {result['label_accuracy_mean']:.3f} "
              f"on average, {low:.3f}-{high:.3f} (2.5-97.5 %); the figures above are the first draw's, "
              f"those per class below all draws' together")
    per_class, confusion = result["per_class_accuracy"], result["confusion"]
    if args.repeats > 1:
        per_class, confusion = result["per_class_accuracy_draws"], result["confusion_draws"]
    for cls, acc in per_class.items():
        print(f"  {cls}: {acc:.3f}  {confusion[cls]}")
    print(f"  models: {result['model_versions']}")
    return 0
