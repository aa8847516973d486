"""``stmwatch bench autolabel``: time to auto-label one simulated scan (default 256² at 0.1 nm/px).

Reports the median over ``--repeats`` runs of each stage (preprocess, features, k-means at every
resolution, rule and mask) and of the whole, with the torch threads used; the UNet segmenter on
the same scan is timed in the same run for a ratio. ``--method planted`` (the default of
``stmwatch autolabel``) labels each scan with the clusters and then a planted-defect detector: the
detector's pass (a width-8 UNet, untrained here: the network's time does not depend on its weights,
though the post-processing depends a little on what it finds) is timed too, and the per-scan
total is the sum. Its training (once per folder of scans, minutes) is
not in this figure. Nothing is asserted: the target (under 3 s
for 256² on 2 CPU cores) is read off the output.
"""
from __future__ import annotations

import json

import numpy as np

from stmwatch.models.autolabel import DEFAULT_K

HELP = "time of auto-labelling a scan (features + k-means + rule), vs the UNet on the same scan"


def add_arguments(parser) -> None:
    parser.add_argument("--surface", default="si001h")
    parser.add_argument("--pixels", type=int, default=256, help="scan size, pixels a side (default 256)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--features", default="filters", help="filters | unet | unet:PATH | TorchScript file")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="clusters (default %(default)s)")
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--method", choices=("planted", "clusters"), default="planted")
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    import torch

    from stmwatch.models.autolabel.command import parse_ints
    from stmwatch.models.autolabel.features import make_features
    from stmwatch.models.autolabel.label import autolabel
    from stmwatch.models.sim.simulate import Artefacts, simulate_scan

    torch.set_num_threads(args.threads)
    scan, _ = simulate_scan(args.surface, 12_345, pixels=(args.pixels, args.pixels), artefacts=Artefacts.all())
    features = make_features(args.features)
    scales = parse_ints(args.scales)
    times = _seconds(lambda: autolabel(scan, args.surface, features=features, k=args.k, scales=scales), args.repeats)
    unet = None
    try:
        from stmwatch.daemon.config import load_config

        from stmwatch.models.load import load_segmenter
        from stmwatch.models.surfaces import get_surface

        config = load_config(None)
        segmenter = load_segmenter(config.models, get_surface(args.surface), config.preprocess, "torch")
        unet = float(np.median(_seconds(lambda: segmenter.segment(scan), args.repeats)))
    except Exception as exc:  # the ratio is extra; the auto-label time is the figure
        print(f"(UNet not timed: {exc})")
    detector = None
    if args.method == "planted":
        try:
            detector = _time_detector(scan, args.surface, args.repeats)
        except Exception as exc:  # reported, not fatal: the clusters' time stands
            print(f"(detector not timed: {exc})")
    total = float(np.median(times)) + (detector or 0.0)
    result = {"surface": args.surface, "method": args.method, "pixels": args.pixels, "threads": args.threads, "features": features.name,
              "k": args.k, "scales": scales, "autolabel_s": round(float(np.median(times)), 3),
              "autolabel_min_s": round(float(np.min(times)), 3),
              "unet_s": None if unet is None else round(unet, 3),
              "detector_s": None if detector is None else round(detector, 3), "per_scan_s": round(total, 3),
              "autolabel_over_unet": None if unet is None else round(total / unet, 2)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"clusters of a {args.pixels}² {args.surface} scan ({features.name}, k={args.k}, scales {scales}, "
              f"{args.threads} threads): median {result['autolabel_s']:.3f} s over {args.repeats} runs")
        if detector is not None:
            print(f"planted-defect detector on the same scan: {detector:.3f} s")
        print(f"autolabel ({args.method}) per scan: {total:.3f} s (target < 3 s on 2 cores)")
        if unet is not None:
            print(f"UNet segmenter (torch) on the same scan: {unet:.3f} s; autolabel / UNet = "
                  f"{result['autolabel_over_unet']}")
    return 0


def _time_detector(scan, surface: str, repeats: int) -> float:
    """Median time of the planted-defect detectors' pass over ``scan`` (``MEMBERS`` untrained
    width-8 UNets, averaged, run as ``stmwatch autolabel --method planted`` runs them per scan)."""
    import tempfile
    from pathlib import Path

    from stmwatch.models.autolabel import MEMBERS
    from stmwatch.models.autolabel.planted import PlantSettings, detector_mask, detector_segmenter
    from stmwatch.models.unet import UNet, UNetConfig, save_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        paths = [save_checkpoint(UNet(UNetConfig(width=PlantSettings().width, depth=3)), Path(folder) / f"detector{i}.pt")
                 for i in range(MEMBERS)]
        segment = detector_segmenter(paths, surface)
        return float(np.median(_seconds(lambda: detector_mask(scan, segment), repeats)))


def _seconds(fn, repeats: int) -> list[float]:
    """Seconds each of ``repeats`` calls of ``fn`` takes, after one call to warm up."""
    from .bench_common import timed

    fn()
    return [timed(fn) / 1e3 for _ in range(repeats)]
