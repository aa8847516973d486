"""``stmwatch train fewshot``: episodic training of a few-shot method on crop folders."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "train a few-shot classifier (prototypical, matching, relation, SimpleShot) on crop folders"
DESCRIPTION = """Train a few-shot method on crops <data>/<surface>/<class>/*.npy|png|tif (any size, 1 or 2
channels: resized to the network's 2 x 32 x 32 input).

Episodic methods learn from N-way K-shot episodes, one surface per episode; SimpleShot learns as a
plain classifier over every training class. --generate adds classes made by data manipulation
(rotated/flipped/contrast-inverted copies of a class, the method's ablation). A prototypical network
is saved with its calibrated 'unknown' distance."""

METHOD_CHOICES = ("proto", "matching", "relation", "simpleshot", "pixel_nn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="crop folder <data>/<surface>/<class>/*")
    parser.add_argument("--surfaces", default="si001h", help="comma-separated surfaces to train on")
    parser.add_argument("--method", default="proto", choices=METHOD_CHOICES)
    parser.add_argument("--backbone", default="conv4", choices=("conv4", "resnet18"))
    parser.add_argument("--metric", default="euclidean", choices=("euclidean", "cosine"),
                        help="prototypical network: distance on raw or on L2-normalised embeddings")
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes (SimpleShot: batches)")
    parser.add_argument("--way", type=int, default=8, help="classes per training episode")
    parser.add_argument("--shot", type=int, default=5, help="support crops per class in training episodes")
    parser.add_argument("--query", type=int, default=8, help="query crops per class per episode")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true", help="no shift/gain/noise augmentation")
    parser.add_argument("--strong-augment", action="store_true",
                        help="also scale jitter, blur, lattice-like background, variable noise (helps on new surfaces)")
    parser.add_argument("--mix-surfaces", action="store_true",
                        help="episodes draw classes from all --surfaces together (then --way may reach all classes)")
    parser.add_argument("--learn-temperature", action="store_true",
                        help="prototypical network, cosine metric: train the temperature (starts at 10)")
    parser.add_argument("--generate", default="", metavar="T,T", help="class-generation transforms, e.g. "
                        "rot90,flip_v,invert (known: rot90,rot180,rot270,flip_h,flip_v,invert); empty = off")
    parser.add_argument("--instrument-augment", action="store_true",
                        help="also tip blur, feedback lag, contrast and line noise of other instruments")
    parser.add_argument("--crop-norm", choices=("none", "per_crop"), default="none",
                        help="per_crop: every crop normalised on its own, in training and by the classifier")
    parser.add_argument("--out", default="fewshot.pt", help="weights file to write")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="save every N steps (0: only at end)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def run(args) -> int:
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from stmwatch.models.fewshot.classifier import calibrate_unknown_distance
    from stmwatch.models.fewshot.crops import load_surface
    from stmwatch.models.fewshot.training import TrainConfig, save, train

    torch.set_num_threads(args.threads)
    surfaces = tuple(s for s in args.surfaces.split(",") if s)
    config = TrainConfig(method=args.method, backbone=args.backbone, metric=args.metric, way=args.way, shot=args.shot, query=args.query,
                         episodes=args.episodes, lr=args.lr, seed=args.seed, augment=not args.no_augment,
                         strong_augment=args.strong_augment, mix_surfaces=args.mix_surfaces,
                         learn_temperature=args.learn_temperature, instrument_augment=args.instrument_augment,
                         crop_norm=args.crop_norm,
                         generate=tuple(t for t in args.generate.split(",") if t), surfaces=surfaces)
    sets = [load_surface(args.data, s, min_per_class=args.shot + args.query) for s in surfaces]
    meta = {"data": str(Path(args.data).resolve()), "classes": {s.surface: s.labels for s in sets}}
    out = Path(args.out)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn()) as progress:
        task = progress.add_task(f"train {args.method}", total=args.episodes, loss=float("nan"))

        def on_step(step: int, loss: float, method) -> None:
            progress.update(task, advance=1, loss=loss)
            if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < args.episodes:
                save(out, method, config, {**meta, "steps": step + 1})

        method = train(sets, config, on_step)
    if args.method == "proto":
        meta["unknown_distance"] = calibrate_unknown_distance(method, sets, seed=args.seed)
    save(out, method, config, {**meta, "steps": args.episodes})
    logging.getLogger(__name__).info("saved %s", out)
    print(f"saved {out}" + (f" (unknown distance {meta['unknown_distance']:.3g})" if "unknown_distance" in meta else ""))
    return 0
