"""``stmwatch eval fewshot|segment``: evaluate a model with the method's protocol."""
from __future__ import annotations

from ._dispatch import add_targets, run_target

HELP = "evaluate the few-shot classifier (accuracy ± 95 % CI over episodes), the segmenter, the one-click flow or the auto-labels"
TARGETS = {"fewshot": "stmwatch.daemon.targets.eval_fewshot", "segment": "stmwatch.daemon.targets.eval_segment",
           "oneclick": "stmwatch.daemon.targets.eval_oneclick", "autolabel": "stmwatch.daemon.targets.eval_autolabel"}


def add_arguments(parser) -> None:
    add_targets(parser, TARGETS, "model")


run = run_target
