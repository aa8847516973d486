"""``stmwatch eval fewshot|segment``: evaluate a model with the method's protocol."""
from __future__ import annotations

from ._dispatch import add_targets, run_target

HELP = "evaluate the few-shot classifier (accuracy ± 95 % CI over episodes), the segmenter or the auto-labels"
TARGETS = {"fewshot": "stmwatch.models.fewshot.evaluate", "segment": "stmwatch.models.eval_segment",
           "autolabel": "stmwatch.models.autolabel.evaluate"}


def add_arguments(parser) -> None:
    add_targets(parser, TARGETS, "model")


run = run_target
