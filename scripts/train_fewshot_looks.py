#!/usr/bin/env python3
"""Fine-tune the shipped cosine prototypical conv4 on crops of every look (issue 18, one-click labels).

Crops cut the daemon's way at the true defects of simulated scans (:mod:`stmwatch.models.fewshot.looks`):
training-style scans (both bias polarities on Si and Ge) and domain-randomised scans (either bias
sign on every surface, inverted corrugation, other tips, noise and defect looks), with cross-look
episodes (support of one look, queries of another). Writes the weights with the cosine unknown
distance re-calibrated, and the figures of the validation sets (other seeds, never the foreign style).

    OMP_NUM_THREADS=1 python scripts/train_fewshot_looks.py --out runs/cls/looks.pt \\
        [--start models/weights/fewshot_proto_conv4.pt] [--steps 800] [--seed 1] [--class-looks 0.6] [--tta none] \\
        [--sessions]
    # the shipped net with test-time d8 (no training; unknown distance recalibrated):
    OMP_NUM_THREADS=1 python scripts/train_fewshot_looks.py --steps 0 --tta d8 --out models/weights/fewshot_proto_conv4.pt

Crop sets are cached as ``runs/looks/<name>_<surface>.npz`` (``--looks DIR``) and made when absent:
``ttrain`` (training style, seed 100, 300 scans), ``rtrain`` (randomised, seed 100, 150 scans of 128-192 px),
``tval`` (training style, seed 2000, 200 scans), ``rval`` (randomised, seed 5000, 70 scans); the session
sets (crops that know their microscope, ``look_crops.make_session_set``) ``strain`` (200 randomised
microscopes x 5 scans of 192², seed 5000; trained on with ``--sessions``: episodes within one microscope)
and ``sval`` (20 x 6, seed 5100; validation only).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from stmwatch.models.fewshot.classifier import calibrate_unknown_distance
from stmwatch.models.fewshot.look_crops import make_look_set, make_session_set
from stmwatch.models.fewshot.looks import LookSet, cross_look_accuracy, session_accuracy
from stmwatch.models.fewshot.training import load, save, train

SURFACES = ("si001h", "ge001", "tio2110")
# name: (seed, scans per surface, randomised, pixels (see looks.look_crops))
SETS = {"ttrain": (100, 300, False, 192), "rtrain": (100, 150, True, 96), "tval": (2000, 200, False, 192),
        "rval": (5000, 70, True, 192)}
# session sets, crops that know their randomised microscope: name: (seed, microscopes, scans each, pixels)
SESSION_SETS = {"strain": (5000, 200, 5, 192), "sval": (5100, 20, 6, 192)}


def look_set(folder: Path, name: str, surface: str) -> LookSet:
    path = folder / f"{name}_{surface}.npz"
    if not path.is_file():
        if name in SESSION_SETS:
            seed, microscopes, scans, pixels = SESSION_SETS[name]
            make_session_set(surface, microscopes, scans, seed, pixels=pixels).save(path)
        else:
            seed, scans, randomised, pixels = SETS[name]
            make_look_set(surface, scans, seed, randomised, pixels=pixels).save(path)
    return LookSet.load(path).within(25.0)


def validate(net, folder: Path, surfaces=SURFACES) -> dict[str, float]:
    """4-way 1-shot accuracy, 60 episodes each: tval/rval, any look and cross-look, per surface; and
    within one randomised microscope (sval: support and queries from one session)."""
    out = {}
    for name in ("tval", "rval"):
        for s in surfaces:
            ls = look_set(folder, name, s)
            for cross in (False, True):
                out[f"{name}/{s}/{'cross' if cross else 'any'}"] = round(cross_look_accuracy(net, ls, cross=cross), 4)
    for s in surfaces:
        out[f"sval/{s}/session"] = round(session_accuracy(net, look_set(folder, "sval", s)), 4)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--start", type=Path, default=Path(__file__).resolve().parents[1] / "models/weights/fewshot_proto_conv4.pt")
    p.add_argument("--looks", type=Path, default=Path("runs/looks"))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--shot", type=int, default=5)
    p.add_argument("--cross", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--class-looks", type=float, default=0.0,
                   help="share of each episode's classes given a new look of their own (fewshot/class_looks.py)")
    p.add_argument("--tta", choices=("none", "flips", "d8"), default=None,
                   help="test-time augmentation stored with the weights (default: the start's); the unknown "
                        "distance and the validation figures are computed with it")
    p.add_argument("--sessions", action="store_true",
                   help="also train on the session sets (strain): episodes within one randomised microscope")
    p.add_argument("--validate-only", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    net, config, meta = load(args.start)
    if args.validate_only:  # the net as it is, with each test-time augmentation (proto.TTA)
        for tta in ("none", "flips", "d8"):
            net.tta = tta
            print(tta, json.dumps(validate(net, args.looks)), flush=True)
        return 0
    names = ("ttrain", "rtrain") + (("strain",) if args.sessions else ())
    sets = [look_set(args.looks, n, s) for n in names for s in SURFACES]
    cfg = dataclasses.replace(config, episodes=args.steps, lr=args.lr, shot=args.shot, seed=args.seed,
                              cross_look=args.cross, class_looks=args.class_looks, init=str(args.start.name))

    def on_step(step: int, loss: float, _m) -> None:
        if step % 50 == 0:
            logging.info("step %d loss %.4f", step, loss)

    if args.steps > 0:
        net = train(sets, cfg, on_step, start=net)
        meta = {**meta, "steps": args.steps,
                "data": "looks: " + ", ".join(f"{n} seed {SETS[n][0]} x {SETS[n][1]} scans" for n in ("ttrain", "rtrain"))
                + ("; sessions: strain seed {} x {} microscopes x {} scans".format(*SESSION_SETS["strain"][:3])
                   if args.sessions else "")}
    else:  # no training: only the test-time augmentation and what is calibrated with it change
        cfg = config
        logging.info("--steps 0: the weights, their training config and record stay as they are "
                     "(--lr, --shot, --cross, --seed and --class-looks are not used)")
    net.tta = args.tta or meta.get("tta", "none")
    plain = [ls.crop_set() for ls in sets if ls.sessions is None]  # calibrated as before the session sets
    unknown = calibrate_unknown_distance(net, plain, percentile=99.0)
    figures = validate(net, args.looks)
    meta = {**meta, "unknown_distance": unknown, "validation": figures, "tta": net.tta}
    if any(k.startswith("polarity_maps") for k in meta):  # they belong to the embedding they were fitted for
        meta = {k: v for k, v in meta.items() if not k.startswith("polarity_maps")}
        logging.info("polarity maps left out: fit them for these weights with scripts/fit_polarity_maps.py --weights %s",
                     args.out)
    save(args.out, net, cfg, meta)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
