#!/usr/bin/env python
"""The method's claim on the simulator: a UNet trained ONLY on auto-labels beats the auto-labels.

Per surface: (1) simulate --scans training scans (seeds below 1 000 000, the same generator as
``stmwatch train unet``: random geometry, mostly every artefact) and write them as .sxm files
WITHOUT their truth; (2) ``stmwatch autolabel`` them (``--method``: the planted-defect detector by
default, or the cluster rule alone); (3) ``stmwatch train unet
--labels`` (since stop 25 with planted defects too, and run as the detector is: its weights say so;
``--no-plant`` for the labels alone); (4) score both on the same held-out scans
(``eval_segment.held_out_scan``, seeds from 7 000 000, every artefact on), with the same matching
(components -> centroids, 0.5 nm).

    OMP_NUM_THREADS=1 python scripts/autolabel_unet.py --out runs/autolabel_long_seed0 --seed 0   # docs/autolabel.md
    # another draw of the auto-labeller (k-means, detectors): --label-seed 1 --out runs/autolabel_seed1
    # a longer run on a GPU: --scans 300 --epochs 40 --steps 200 --width 16 --device cuda --workers 12
Writes OUT/<surface>/results.json and prints one line per surface.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/autolabel")
    parser.add_argument("--surfaces", nargs="+", default=["si001h", "ge001", "tio2110"])
    parser.add_argument("--scans", type=int, default=60, help="training scans per surface")
    parser.add_argument("--held-out", type=int, default=20, help="held-out scans per surface for the F1")
    parser.add_argument("--epochs", type=int, default=40, help="the UNet's epochs (default 40; 20 until stop 26)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="training seed of train unet (default 0)")
    parser.add_argument("--label-seed", type=int, default=0,
                        help="stmwatch autolabel --seed: k-means and the detector's training (default 0)")
    parser.add_argument("--method", choices=("planted", "clusters"), default="planted",
                        help="stmwatch autolabel --method (default planted)")
    parser.add_argument("--plant", action=argparse.BooleanOptionalAction, default=True,
                        help="stmwatch train unet --labels --plant (default) or --no-plant")
    args = parser.parse_args(argv)

    import torch

    from stmwatch.daemon.cli import main as stmwatch
    from stmwatch.drivers.sxm import write_sxm
    from stmwatch.models.autolabel.evaluate import evaluate_autolabel
    from stmwatch.models.eval_segment import evaluate_surfaces
    from stmwatch.models.train_unet import SURFACE_KEYS, training_scan

    torch.set_num_threads(args.threads)
    for surface in args.surfaces:
        root = Path(args.out) / surface
        scans, labels, run = root / "scans", root / "labels", root / "unet"
        scans.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for i in range(args.scans):  # the training seeds of train_unet (surface_index * 100 000 + i)
            path = scans / f"train_{i:04d}.sxm"
            if not path.exists():
                scan, _ = training_scan(surface, SURFACE_KEYS.index(surface) * 100_000 + i)
                write_sxm(scan, path)  # no truth is written
        print(f"{surface}: {args.scans} training scans in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        if stmwatch(["autolabel", str(scans), "--surface", surface, "--out", str(labels), "--method", args.method,
                     "--device", args.device, "--seed", str(args.label_seed)]) != 0:
            print(f"{surface}: autolabel failed on some scans or its detector (above); stopping", file=sys.stderr)
            return 2
        print(f"{surface}: auto-labelled in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        stmwatch(["train", "unet", "--labels", str(labels), "--out", str(run), "--epochs", str(args.epochs),
                  "--steps", str(args.steps), "--batch", str(args.batch), "--width", str(args.width),
                  "--patch", str(args.patch), "--threads", str(args.threads), "--device", args.device,
                  "--workers", str(args.workers), "--seed", str(args.seed),
                  "--plant" if args.plant else "--no-plant"])
        print(f"{surface}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        detector = str(labels / "detector") if args.method == "planted" else None  # all its members
        auto = evaluate_autolabel([surface], args.held_out, detector=detector)[surface]
        unet = evaluate_surfaces([surface], args.held_out, weights=str(run / "best.pt"))[surface]
        result = {"surface": surface, "autolabel": auto, "unet_on_autolabels": unet, "args": vars(args)}
        (root / "results.json").write_text(json.dumps(result, indent=1))
        print(f"{surface}: held-out F1 auto-labels {auto['f1']:.3f} (P {auto['precision']:.3f} R {auto['recall']:.3f}), "
              f"UNet on auto-labels {unet['f1']:.3f} (P {unet['precision']:.3f} R {unet['recall']:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
