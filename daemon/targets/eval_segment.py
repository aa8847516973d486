"""``stmwatch eval segment``: detection F1 and position error of the UNet on held-out simulated
scans (the scoring: :mod:`stmwatch.models.eval_segment`)."""
from __future__ import annotations

import json

from stmwatch.models.eval_segment import BLOCK_STEP, HELD_OUT_SEED, MATCH_RADIUS_NM, evaluate_surfaces
from stmwatch.models.settings import BACKENDS

HELP = "detection F1 and position error of the UNet on held-out simulated scans"


def add_arguments(parser) -> None:
    parser.add_argument("--surfaces", nargs="+", default=["si001h", "ge001", "tio2110"], help="surfaces to score")
    parser.add_argument("--scans", type=int, default=100, help="held-out scans per surface (default 100)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first held-out seed")
    parser.add_argument("--blocks", type=int, default=1, help=f"blocks of --scans scans, from --seed every "
                        f"{BLOCK_STEP:,} seeds, pooled (the model card's figure: --blocks 4)")
    parser.add_argument("--weights", help="UNet checkpoint (default: the shipped weights)")
    parser.add_argument("--backend", choices=BACKENDS, help="inference backend")
    parser.add_argument("--artefacts", default="all", help='simulated artefacts: "all" (default), "none", '
                        'or a list such as "drift,scars=2" (names of simulate.Artefacts)')
    parser.add_argument("--radius-nm", type=float, default=MATCH_RADIUS_NM, help="match radius (nm)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def print_table(results: dict[str, dict], radius_nm: float, artefacts: str = "all", what: str = "segmentation") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{what} on held-out simulated scans (artefacts: {artefacts}; match radius "
                        f"{radius_nm} nm)", title_justify="left")
    for name in ("surface", "scans", "true", "found", "precision", "recall", "F1", "F1 95 % (scans resampled)",
                 "median |dx| nm", "median |dy| nm"):
        table.add_column(name, justify="left" if name == "surface" else "right")
    for key, r in results.items():
        table.add_row(key, str(r["scans"]), str(r["true"]), str(r["found"]), f"{r['precision']:.3f}",
                      f"{r['recall']:.3f}", f"{r['f1']:.3f}", "{:.3f}-{:.3f}".format(*r["f1_ci95"]),
                      f"{r['median_dx_nm']:.3f}", f"{r['median_dy_nm']:.3f}")
    Console().print(table)


def run(args) -> int:
    results = evaluate_surfaces(args.surfaces, args.scans, backend=args.backend, weights=args.weights,
                                seed=args.seed, radius_nm=args.radius_nm, artefacts=args.artefacts,
                                blocks=args.blocks)
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results, args.radius_nm, args.artefacts)
    return 0
