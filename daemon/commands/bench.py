"""``stmwatch bench segment|classify|stream|autolabel``: speed, reported as ratios measured in one run."""
from __future__ import annotations

from ._dispatch import add_targets, run_target

HELP = "benchmark segmentation backends, classification, live-stream publish delay and auto-labelling"
TARGETS = {
    "segment": "stmwatch.models.bench_segment",
    "classify": "stmwatch.models.fewshot.bench",
    "stream": "stmwatch.daemon.bench_stream",
    "autolabel": "stmwatch.models.autolabel.bench",
}


def add_arguments(parser) -> None:
    add_targets(parser, TARGETS, "target")


run = run_target
