#!/usr/bin/env python
"""Iterate the method's claim: the UNet trained on auto-labels labels the same scans again.

``scripts/autolabel_unet.py`` showed that a UNet trained only on auto-labels is a better labeller
than the auto-labeller itself (Si, Ge). This takes one of its runs (``--start OUT``: the
unlabelled training scans in ``OUT/<surface>/scans`` and the UNet in ``OUT/<surface>/unet``) and,
for each round, lets the latest UNet find the defects of those same scans, writes them as masks
(one pixel per detected defect, the same mask format as ``stmwatch autolabel``; only confident ones, ``--confident``; read back by
``train unet --labels`` as defects at those centres), trains a new UNet on them from scratch with
the same settings, and scores it on the same held-out scans. No truth is read except for the
held-out score, and nothing is chosen by it: every round is reported.

    OMP_NUM_THREADS=1 python scripts/autolabel_selftrain.py --start runs/autolabel_long_seed0 \\
        --out runs/autolabel_self_seed0 --rounds 2 --surfaces si001h
Writes OUT/<surface>/round<k>/{labels,unet}, OUT/<surface>/results.json; one line per round. Run
again into the same OUT, it goes on for --rounds more rounds after the last one there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stmwatch.models.segment import UNetSegmenter


def write_detection_masks(segmenter: "UNetSegmenter", scans: list[Path], surface: str, out: Path,
                          confident: float = 0.0) -> int:
    """One ``<stem>.mask.npy`` per scan (uint8, the scan's shape, display frame): 1 at the pixel
    of each defect ``segmenter`` finds whose mean probability is at least ``confident``; and the
    ``autolabel.json`` that ``train unet --labels`` reads. Returns the number of defects written."""
    import numpy as np

    from stmwatch.drivers.sxm import read_sxm

    out.mkdir(parents=True, exist_ok=True)
    manifest, total = {}, 0
    for path in scans:
        scan = read_sxm(path)
        mask = np.zeros(scan.shape, np.uint8)
        for d in segmenter.segment(scan):
            if d.score < confident:
                continue
            r, c = int(round(d.row)), int(round(d.col))
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
                mask[r, c] = 1
                total += 1
        np.save(out / f"{path.stem}.mask.npy", mask)
        manifest[path.stem] = {"scan": str(path.resolve()), "surface": surface, "labeller": segmenter.version}
    (out / "autolabel.json").write_text(json.dumps(manifest, indent=1))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, type=Path, help="an output folder of scripts/autolabel_unet.py")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--surfaces", nargs="+", default=["si001h", "ge001", "tio2110"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--held-out", type=int, default=None, help="held-out scans scored (default: as the --start run)")
    parser.add_argument("--confident", type=float, default=0.0,
                        help="a detection becomes a label only when its mean probability is at least this (default: every detection)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import dataclasses

    import torch

    from stmwatch.daemon.cli import main as stmwatch
    from stmwatch.models.eval_segment import evaluate_surfaces
    from stmwatch.models.load import load_segmenter
    from stmwatch.models.settings import ModelSettings
    from stmwatch.models.surfaces import get_surface

    torch.set_num_threads(args.threads)
    for surface in args.surfaces:
        start = args.start / surface
        first = json.loads((start / "results.json").read_text())
        train_args = first["args"]
        scans = sorted((start / "scans").glob("*.sxm"))
        weights = start / "unet" / "best.pt"
        rounds = [{"round": 0, "labeller": "auto-labels", "f1": first["autolabel"]["f1"]},
                  {"round": 1, "labeller": "auto-labels", "unet": first["unet_on_autolabels"]}]
        done = args.out / surface / "results.json"
        if done.exists():  # go on from the last round of an earlier run into the same --out
            rounds = json.loads(done.read_text())["rounds"]
            weights = args.out / surface / f"round{rounds[-1]['round']}" / "unet" / "best.pt"
        print(f"{surface}: auto-labels F1 {first['autolabel']['f1']:.3f}, round 1 UNet "
              f"{first['unet_on_autolabels']['f1']:.3f} ({args.start}); going on after round {rounds[-1]['round']}", flush=True)
        for k in range(rounds[-1]["round"] + 1, rounds[-1]["round"] + 1 + args.rounds):
            root = args.out / surface / f"round{k}"
            t0 = time.perf_counter()
            segmenter = load_segmenter(dataclasses.replace(ModelSettings(), segmenter_weights=str(weights)),
                                       get_surface(surface), backend="torch")
            found = write_detection_masks(segmenter, scans, surface, root / "labels", args.confident)
            stmwatch(["train", "unet", "--labels", str(root / "labels"), "--out", str(root / "unet"),
                      "--epochs", str(train_args["epochs"]), "--steps", str(train_args["steps"]),
                      "--batch", str(train_args["batch"]), "--width", str(train_args["width"]),
                      "--patch", str(train_args["patch"]), "--threads", str(args.threads),
                      "--device", "cpu", "--seed", str(train_args["seed"]),
                      "--plant" if train_args.get("plant") else "--no-plant"])  # as the first round's UNet
            weights = root / "unet" / "best.pt"
            unet = evaluate_surfaces([surface], args.held_out or train_args["held_out"], weights=str(weights))[surface]
            rounds.append({"round": k, "labeller": f"round {k - 1} UNet {segmenter.version}", "labels": found, "unet": unet,
                           "seconds": round(time.perf_counter() - t0)})
            print(f"{surface}: round {k}: {found} labels from the round {k - 1} UNet, held-out F1 {unet['f1']:.3f} "
                  f"(P {unet['precision']:.3f} R {unet['recall']:.3f}) in {time.perf_counter() - t0:.0f} s", flush=True)
            done.write_text(json.dumps({"surface": surface, "rounds": rounds,  # after each round: a crash keeps them
                                        "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
