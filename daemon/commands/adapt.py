"""``stmwatch adapt``: adapt the models to this microscope from a folder of its unlabelled scans."""
from __future__ import annotations

import json
import sys

from ._args import surface_key

HELP = "adapt the models to this microscope from its unlabelled .sxm scans; writes a model bundle"
DESCRIPTION = """Pseudo-label the scans with the UNet's confident output where its four mirror passes agree (--labels:
a pluggable label source), fine-tune the UNet on them in two rounds of self-training with the training's augmentation and noise, adapt the few-shot embedding to
the lab's defect crops (BatchNorm statistics, unknown distance, and a pool of crops for transductive
prototype refinement), and write a model bundle: weights, support set (--support), card with the
before/after figures on a held-back quarter of the scans, the settings it was made with, sha256 hashes.

  stmwatch adapt --surface si001h --scans ~/stm-data/today --out ~/bundles/si-2026-03
  stmwatch process scan.sxm --models ~/bundles/si-2026-03
  # or [models] bundle = "~/bundles/si-2026-03" in config.toml, then: systemctl reload stmwatch
  stmwatch autolabel ~/stm-data/today --surface si001h --out ~/labels/today   # where the UNet finds little:
  stmwatch adapt --surface si001h --scans ~/stm-data/today --labels ~/labels/today --out ~/bundles/si-2026-03b

On 2 CPU cores, 12 scans of 256 x 256 take a few minutes (stmwatch/models/adapt.py, AdaptSettings)."""


def add_arguments(parser) -> None:
    parser.add_argument("--surface", required=True, type=surface_key, help="si001h | ge001 | tio2110")
    parser.add_argument("--scans", required=True, metavar="DIR", help="folder of the lab's .sxm scans (unlabelled)")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    parser.add_argument("--support", metavar="DIR", help="a support set <class>/*.npy to ship in the bundle")
    parser.add_argument("--labels", default="unet-flips",
                        help="label source (default 'unet-flips': the UNet's confident output where its four mirror "
                             "passes agree; 'unet': its confident output), or a folder of masks that "
                             "'stmwatch autolabel --out DIR' wrote for these scans (for a microscope on which the "
                             "UNet finds little; one round of fine-tuning)")
    parser.add_argument("--steps", type=int, help="UNet fine-tuning steps (default: AdaptSettings.steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--config", metavar="TOML", help="config file ([models] to start from, [preprocess])")
    parser.add_argument("--json", action="store_true", help="print the card's figures as one JSON object")


def run(args) -> int:
    import dataclasses

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stmwatch.daemon.config import ConfigError, load_config
    from stmwatch.models.adapt import AdaptSettings, adapt

    torch.set_num_threads(max(1, args.threads))  # (--surface is a known surface: argparse checked it)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = AdaptSettings(seed=args.seed)
    if args.steps is not None and args.steps < 1:
        print(f"error: --steps must be 1 or more, not {args.steps}", file=sys.stderr)
        return 1
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    names = {"labels": "pseudo-labelling scans", "unet": "fine-tuning the UNet", "embedding": "adapting the embedding",
             "card": "before/after on held-back scans"}
    columns = [TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=args.json) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(names.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            figures = adapt(args.scans, args.surface, args.out, config, support=args.support, label_source=args.labels,
                            settings=settings, progress=progress)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"wrote bundle {args.out} (id {figures['bundle']}) in {figures['seconds']} s from "
          f"{figures['trained_on_scans']} scans, {figures['crops']} defect crops")
    for name in ("before", "after"):
        if name in figures:
            print(f"  {name}: {figures[name]}")
    print(f"use it: stmwatch process FILE --models {args.out}   or   [models] bundle = \"{args.out}\"")
    return 0
