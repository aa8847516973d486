"""``stmwatch train unet``: train the UNet segmenter on simulated scans, or on auto-label masks
(``--labels``); the training itself is :mod:`stmwatch.models.train_unet`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stmwatch.models.surfaces import SURFACES

if TYPE_CHECKING:  # torch is imported in run(), so that ``stmwatch --help`` stays fast
    from stmwatch.models.train_unet import Patches

HELP = "train the UNet segmenter on simulated scans (CPU in minutes; GPU with the same command)"

# Defaults of the options left out: on simulated scans, and with --labels the student measured in
# docs/autolabel.md (stops 25-27).
SIMULATED_DEFAULTS = {"patch": 128, "width": 12, "epochs": 8, "steps": 100, "batch": 16}
LABELS_DEFAULTS = {"patch": 96, "width": 8, "epochs": 40, "steps": 50, "batch": 12}


def _defaults(name: str) -> str:
    """The help text's defaults of option ``name``."""
    return f"default {SIMULATED_DEFAULTS[name]}; {LABELS_DEFAULTS[name]} with --labels"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/unet", help="output folder: data.npz, last.pt, best.pt (default runs/unet)")
    parser.add_argument("--surfaces", nargs="+", default=list(SURFACES), help="surfaces to train on (one model)")
    parser.add_argument("--scans", type=int, default=60, help="simulated training scans per surface (default 60)")
    parser.add_argument("--val-scans", type=int, default=8, help="validation scans per surface (default 8)")
    parser.add_argument("--patch", type=int, default=None, help=f"patch size, model pixels ({_defaults('patch')})")
    parser.add_argument("--disc-nm", type=float, default=0.4, help="target disc radius, nm (default 0.4)")
    parser.add_argument("--width", type=int, default=None, help=f"UNet channels at full resolution ({_defaults('width')})")
    parser.add_argument("--depth", type=int, default=3, help="UNet down-sampling steps (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help=_defaults("epochs"))
    parser.add_argument("--steps", type=int, default=None, help=f"optimiser steps per epoch ({_defaults('steps')})")
    parser.add_argument("--batch", type=int, default=None, help=_defaults("batch"))
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--noise", type=float, default=0.5, help="fraction of patches given extra noise")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data (training scans), the order and the weights")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that simulate the scans and augment the batches (default 0: none; "
                             "on a GPU machine, most of its CPU cores). The data do not depend on it; the "
                             "batches do (each worker draws its own), so a run repeats with the same --workers")
    parser.add_argument("--resume", action="store_true", help="go on from OUT/last.pt")
    parser.add_argument("--init", help="start from these weights (e.g. models/weights/unet.pt; their width and depth "
                                       "replace --width/--depth) with a fresh optimiser and learning-rate schedule")
    parser.add_argument("--double-tip-share", type=float, default=None,
                        help="share (0-1) of the simulated scans with a double tip, at a random level 0.6-1.4 "
                             "(default: the usual mix, about 0.82)")
    parser.add_argument("--randomise", type=float, default=0.0, metavar="SHARE",
                        help="share (0-1) of the simulated scans (training and validation) that are domain-randomised "
                             "(models/sim/randomise.py: tips, feedback lag, noise spectra, contrast, defect looks, "
                             "density, contamination; default 0: the training style only)")
    parser.add_argument("--weights", help="also copy the best weights here (e.g. models/weights/unet.pt)")
    parser.add_argument("--labels", metavar="DIR", help="train on scans with the masks of 'stmwatch autolabel --out DIR' "
                        "instead of simulated truth (--scans, --val-scans and --surfaces are then not used; the "
                        "validation F1 is against the auto-labels of the last tenth of the scans)")
    parser.add_argument("--plant", action=argparse.BooleanOptionalAction, default=None,
                        help="with --labels (default on): also train on copies of the scans with synthetic defects "
                             "planted, as the auto-labeller's detector, and record in the weights that they are run "
                             "as it is (components of mean probability >= 0.7, a double tip's ghosts by pairs): "
                             "+0.038 F1 on 100 tuning scans per surface (docs/autolabel.md, stop 25); --no-plant: the "
                             "auto-labels alone, the segmenter's usual decoding")


def run(args) -> int:
    import torch
    from rich.console import Console

    from stmwatch.models.train_unet import train
    from stmwatch.models.unet import UNet, UNetConfig

    console = Console()
    if getattr(args, "labels", None):  # every bad scan or mask named now, not minutes into reading them
        from stmwatch.models.autolabel.training import check_labels

        with console.status(f"checking the scans and masks of {args.labels}"):
            problems = check_labels(args.labels)
        if problems:
            for line in problems:
                print(f"stmwatch train unet: {line}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    radius_px = args.disc_nm / 0.1  # every surface is seen at 0.1 nm per model pixel
    for name, value in (LABELS_DEFAULTS if getattr(args, "labels", None) else SIMULATED_DEFAULTS).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if getattr(args, "plant", None) is not None and not getattr(args, "labels", None):
        console.print("--plant and --no-plant apply to --labels only: ignored")
    if getattr(args, "labels", None):
        try:
            data, val = _labelled_data(args, out, radius_px, console)
        except ValueError as exc:  # ScanReadError too: a file changed since it was checked
            print(f"stmwatch train unet: {exc}", file=sys.stderr)
            return 2
    else:
        data, val = _simulated_data(args, out / "data.npz", radius_px, console)
    if args.init:  # (with --resume, OUT/last.pt then replaces these weights)
        from stmwatch.models.unet import load_checkpoint

        model, state = load_checkpoint(args.init)
        console.print(f"starting from {args.init} (width {model.config.width}, depth {model.config.depth})")
        args.width, args.depth = model.config.width, model.config.depth  # recorded in the meta as used
    else:
        model = UNet(UNetConfig(width=args.width, depth=args.depth))
    meta = {"name": "unet-multi" if len(args.surfaces) > 1 else f"unet-{args.surfaces[0]}",
            "surfaces": args.surfaces, "train_args": {k: v for k, v in vars(args).items()
                                                      if isinstance(v, (int, float, str, list)) and k != "command"}}
    if getattr(args, "labels", None) and args.plant:
        from stmwatch.models.autolabel.planted import DETECTOR_DECODING

        meta["decode"] = dict(DETECTOR_DECODING)  # load_segmenter runs it as the auto-labeller's detector
    history = train(model, data, val, out, epochs=args.epochs, steps=args.steps, batch=args.batch, lr=args.lr,
                    seed=args.seed, device=device, resume=args.resume, noise=args.noise, meta=meta,
                    workers=args.workers)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    if args.weights:
        best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
        Path(args.weights).parent.mkdir(parents=True, exist_ok=True)
        torch.save(best, args.weights)
        console.print(f"best weights (epoch {best['meta'].get('epoch')}) copied to {args.weights}")
    return 0


def _labelled_data(args, out: Path, radius_px: float, console) -> tuple[Patches, Patches]:
    """The patches of the scans and masks in ``args.labels`` (sets ``args.plant`` and ``args.surfaces``)."""
    import torch

    from stmwatch.models.autolabel.training import labelled_patches

    with console.status(f"reading scans and auto-labels from {args.labels}"):
        if args.plant is None and args.resume and (out / "last.pt").exists():  # go on as the run began
            last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)  # our own file, as train()
            args.plant = bool(last.get("meta", {}).get("train_args", {}).get("plant", False))
        args.plant = args.plant is not False  # on unless --no-plant; recorded in the meta's train_args
        # planted as each scan's surface plants them (drawn from the loader's generator, seeded by --seed)
        data, val, args.surfaces = labelled_patches(args.labels, args.patch, radius_px, seed=args.seed,
                                                    plant=args.plant)
    console.print(f"{len(data)} training, {len(val)} validation patches from the auto-labels in {args.labels}")
    return data, val


def _simulated_data(args, cache: Path, radius_px: float, console) -> tuple[Patches, Patches]:
    """Patches of simulated scans with their truth, from ``cache`` when it was made with the same arguments."""
    from stmwatch.models.train_unet import Patches, simulated_patches

    key = json.dumps({"surfaces": args.surfaces, "scans": args.scans, "val": args.val_scans, "patch": args.patch,
                      "disc": args.disc_nm, "seed": args.seed,
                      **({} if args.double_tip_share is None else {"double_tip": args.double_tip_share}),
                      **({"randomise": args.randomise} if args.randomise else {})})
    if cache.exists() and str(np.load(cache)["key"]) == key:
        z = np.load(cache, allow_pickle=True)
        data = Patches(z["images"], z["targets"], list(z["centres"]))
        val = Patches(z["val_images"], z["val_targets"], list(z["val_centres"]))
        console.print(f"data from {cache}: {len(data)} training, {len(val)} validation patches")
        return data, val
    t0 = time.perf_counter()
    with console.status("simulating training scans"):
        data = simulated_patches(args.surfaces, args.scans, args.patch, radius_px, seed_base=args.seed * 10_000,
                                 double_tip_share=args.double_tip_share, workers=args.workers,
                                 randomise=args.randomise)
        val = simulated_patches(args.surfaces, args.val_scans, args.patch, radius_px,
                                seed_base=args.seed * 10_000 + 50_000, max_per_scan=4,
                                double_tip_share=args.double_tip_share, workers=args.workers,
                                randomise=args.randomise)
    obj = np.empty(len(data.centres), dtype=object)
    obj[:] = data.centres
    vobj = np.empty(len(val.centres), dtype=object)
    vobj[:] = val.centres
    np.savez(cache, key=key, images=data.images, targets=data.targets, centres=obj,
             val_images=val.images, val_targets=val.targets, val_centres=vobj)
    console.print(f"simulated {len(data)} training and {len(val)} validation patches "
                  f"in {time.perf_counter() - t0:.0f} s")
    return data, val
