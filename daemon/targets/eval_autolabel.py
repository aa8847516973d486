"""``stmwatch eval autolabel``: detection F1 of the auto-labels against simulator truth on
held-out scans (the scoring: :mod:`stmwatch.models.autolabel.evaluate`)."""
from __future__ import annotations

import json

from stmwatch.models.autolabel import DEFAULT_K
from stmwatch.models.eval_segment import HELD_OUT_SEED, MATCH_RADIUS_NM

from .eval_segment import print_table

HELP = "detection F1 of the auto-labels against simulator truth on held-out scans"


def add_arguments(parser) -> None:
    parser.add_argument("--surfaces", nargs="+", default=["si001h", "ge001", "tio2110"], help="surfaces to score")
    parser.add_argument("--scans", type=int, default=30, help="held-out scans per surface (default 30)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first held-out seed")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="clusters (default %(default)s)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4], help="resolutions (default 1 4)")
    parser.add_argument("--features", default="filters", help="filters | unet | unet:PATH | TorchScript file")
    parser.add_argument("--artefacts", default="all", help='simulated artefacts (default "all")')
    parser.add_argument("--detector", metavar="PATH", help="score planted-defect detectors' masks instead of the "
                        "cluster rule's (trained by 'stmwatch autolabel' on other, unlabelled scans: its OUT/detector "
                        "folder, their probabilities averaged, or one .pt file)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import sys

    from stmwatch.models.autolabel.evaluate import evaluate_autolabel  # torch: not at import (--help)

    try:
        results = evaluate_autolabel(args.surfaces, args.scans, seed=args.seed, k=args.k, scales=args.scales,
                                     features=args.features, artefacts=args.artefacts, detector=args.detector)
    except FileNotFoundError as exc:  # a --detector that is not there (planted.detector_segmenter)
        print(f"stmwatch eval autolabel: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results, MATCH_RADIUS_NM, args.artefacts, what="auto-labels")
    return 0
