#!/usr/bin/env python
"""Score the shipped UNet (or --weights) on held-out simulated scans, per surface.

Held-out set: the simulator with seeds never used in training (from 7_000_000), every artefact
on, random size (256-512 px), scale, direction, angle and offset. A detection is correct within
0.5 nm of a true defect. Prints a table (or --json) with precision, recall, F1 and the median
|error| of x_m and y_m in nm: the figures of models/weights/MODEL_CARD.md.

    python scripts/eval_segmentation.py             # 100 scans per surface (6-8 min each, 1 core here)
    python scripts/eval_segmentation.py --blocks 4  # the card's figure: 4 blocks of 100, pooled
Same code as ``stmwatch eval segment`` (stmwatch.models.eval_segment).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from stmwatch.daemon.targets import eval_segment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    eval_segment.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    results = eval_segment.evaluate_surfaces(args.surfaces, args.scans, backend=args.backend, weights=args.weights,
                                             seed=args.seed, radius_nm=args.radius_nm, artefacts=args.artefacts,
                                             blocks=args.blocks)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        eval_segment.print_table(results, args.radius_nm, args.artefacts)
    passed = all(r["f1"] >= 0.90 and max(r["median_dx_nm"], r["median_dy_nm"]) < 0.1 for r in results.values())
    print("target (F1 >= 0.90, median error < 0.1 nm on every surface):", "met" if passed else "NOT met",
          file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
