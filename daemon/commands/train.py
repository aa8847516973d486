"""``stmwatch train unet|fewshot``: train the segmenter or the few-shot classifier."""
from __future__ import annotations

from ._dispatch import add_targets, run_target

HELP = "train the UNet segmenter or the few-shot classifier (on simulated data)"
TARGETS = {"unet": "stmwatch.daemon.targets.train_unet", "fewshot": "stmwatch.daemon.targets.train_fewshot"}


def add_arguments(parser) -> None:
    add_targets(parser, TARGETS, "model")


run = run_target
