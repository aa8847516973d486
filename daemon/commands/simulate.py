"""``stmwatch simulate``: write simulated ``.sxm`` scans with their ground truth, and crop sets."""
from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "write simulated .sxm scans with ground truth (and few-shot crop sets)"
DESCRIPTION = """Simulate STM scans of Si(001):H, Ge(001) or TiO2(110) and write, for each, NAME.sxm (a real
Nanonis file: Z and Current, forward and backward), NAME.truth.json (defect classes and positions in
display pixels and scanner metres) and NAME.mask.npy (uint8: 0 background, class index + 1).

Artefacts: 'none', 'all', 'random' (a realistic mix per scan, the default) or a comma list of
tilt, line_offsets, noise_1f, white_noise, scars, tip_change, double_tip, drift, creep,
hysteresis, aborted (each optionally name=level, 1 = typical).

--crops N also writes N few-shot crops per class to DIR/crops/<surface>/<class>/<n>.npy
((2, 32, 32) float32 at 0.1 nm per pixel, forward and backward, normalised).
The same arguments always give the same bytes."""


def add_arguments(parser) -> None:
    parser.add_argument("--surface", default="si001h", help="si001h, ge001, tio2110 or 'all' (default si001h)")
    parser.add_argument("--n", type=int, default=1, help="number of scans per surface (default 1)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--pixels", type=int, default=256, help="pixels per line and lines (default 256)")
    parser.add_argument("--size-nm", type=float, default=None, help="frame width in nm (default 0.1 nm per pixel)")
    parser.add_argument("--angle", type=float, default=0.0, help="scan angle, degrees clockwise (default 0)")
    parser.add_argument("--direction", choices=("down", "up"), default="down", help="slow-scan direction")
    parser.add_argument("--offset-nm", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                        help="frame centre in the scanner frame, nm")
    parser.add_argument("--bias", type=float, default=None, help="bias in V (default: random filled/empty)")
    parser.add_argument("--artefacts", default="random", help="none | all | random | comma list (see above)")
    parser.add_argument("--random-geometry", action="store_true",
                        help="random size, scale, angle, offset and direction per scan (ignores the geometry options)")
    parser.add_argument("--style", choices=("training", "foreign", "randomised"), default="training",
                        help="'training' (the models' simulator), 'foreign' (another microscope, frozen, for "
                             "measuring only: docs/foreign_style.md; its own artefacts, --artefacts ignored) or "
                             "'randomised' (one microscope drawn from the domain randomiser's wide spread of tips, "
                             "noise, contrast and defect looks per --seed and surface, the same for all --n scans: "
                             "docs/domain_randomisation.md; --pixels square, its own pixel size, geometry, bias "
                             "and artefacts, --artefacts and --bias ignored)")
    parser.add_argument("--crops", type=int, default=0, metavar="PER_CLASS", help="also write few-shot crops")
    parser.add_argument("--png", action="store_true", help="also write NAME.png (forward Z) for a quick look")
    parser.add_argument("--json", action="store_true", help="one JSON line per scan written")


def check_geometry(args) -> None:
    """Refuse, before anything is written, what would make no scan or a wrong one: fewer than one
    scan, under 8 pixels a line, a frame of no or negative width (its metres would come out
    mirrored), an angle or offset that is not a number."""
    import math

    if args.n < 1:
        raise ValueError(f"--n must be 1 or more, not {args.n}")
    if args.pixels < 8:
        raise ValueError(f"--pixels must be 8 or more, not {args.pixels}")
    if args.size_nm is not None and not (math.isfinite(args.size_nm) and args.size_nm > 0):
        raise ValueError(f"--size-nm must be a positive width in nm, not {args.size_nm}")
    if not all(math.isfinite(v) for v in (args.angle, *args.offset_nm)):
        raise ValueError("--angle and --offset-nm must be finite numbers")


def run(args) -> int:
    import numpy as np

    from stmwatch.models.sim.artefacts import Artefacts
    from stmwatch.models.sim.simulate import draw_geometry, make_crops, simulate_scan, to_png, write_example
    from stmwatch.models.surfaces import SURFACES, get_surface

    surfaces = list(SURFACES) if args.surface == "all" else [args.surface]
    try:  # bad names fail before anything is written
        for key in surfaces:
            get_surface(key)
        fixed = None if args.artefacts.strip().lower() == "random" else Artefacts.parse(args.artefacts)
        check_geometry(args)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    for si, key in enumerate(surfaces):
        instrument = None
        if args.style == "randomised":  # one microscope for all the surface's scans (scipy: imported only here)
            from stmwatch.models.sim.randomise import draw_style, randomised_scan

            instrument = draw_style(np.random.default_rng([args.seed, si, 41]))
        for i in range(args.n):
            rng = np.random.default_rng([args.seed, si, i, 11])
            scan_seed = int(rng.integers(0, 2**31 - 1))
            if args.random_geometry:
                geometry = draw_geometry(rng)
            else:
                size = args.size_nm if args.size_nm is not None else args.pixels * get_surface(key).nm_per_px
                geometry = {"pixels": (args.pixels, args.pixels), "range_nm": size, "angle_deg": args.angle,
                            "direction": args.direction,
                            "offset_m": (args.offset_nm[0] * 1e-9, args.offset_nm[1] * 1e-9)}
            artefacts = fixed if fixed is not None else Artefacts.random(rng)
            if args.style == "foreign" and args.size_nm is None and not args.random_geometry:
                geometry["range_nm"] = None  # the foreign microscope draws its own pixel size
            if instrument is not None:  # the randomised style: its own geometry, artefacts and bias
                scan, truth, _ = randomised_scan(key, scan_seed, pixel_range=(args.pixels, args.pixels),
                                                 instrument=instrument)
            else:
                scan, truth = simulate_scan(key, scan_seed, bias_v=args.bias, artefacts=artefacts, style=args.style,
                                            **geometry)
            stem = f"{key}_{args.seed}_{i:04d}" if args.style == "training" else f"{key}_{args.style}_{args.seed}_{i:04d}"
            path = write_example(scan, truth, out / stem)
            written.add(path.resolve())
            if args.png:
                to_png(scan.topography().forward, path.with_suffix(".png"))
            if args.json:
                print(json.dumps({"file": str(path), "surface": key, "style": args.style, "defects": truth.counts(),
                                  "artefacts": artefacts.on() if args.style == "training" else None,
                                  "bias_v": scan.bias_v}), flush=True)
            else:
                made = (f"{args.style} style" if args.style != "training"
                        else f"artefacts {','.join(artefacts.on()) or 'none'}")
                print(f"{path}: {len(truth.defects)} defects {truth.counts()}, bias {scan.bias_v:g} V, {made}")
    earlier = sorted(p for p in out.glob("*.sxm") if p.resolve() not in written)
    if earlier:  # a folder is read whole by eval oneclick, adapt and autolabel: say so, stdout stays the list
        print(f"note: {out} also holds {len(earlier)} .sxm file(s) this run did not write (e.g. {earlier[0].name}); "
              "eval oneclick, adapt and autolabel read every scan of a folder", file=sys.stderr)
    if args.crops > 0:
        counts = make_crops(out / "crops", surfaces, args.crops, args.seed)
        print(f"{out / 'crops'}: {sum(sum(c.values()) for c in counts.values())} crops")
    return 0
