"""``stmwatch bench segment|classify|stream``: speed, reported as ratios measured in one run."""
from __future__ import annotations

from ._dispatch import add_targets, run_target

HELP = "benchmark segmentation backends, classification and live-stream publish delay"
TARGETS = {
    "segment": "stmwatch.daemon.targets.bench_segment",
    "classify": "stmwatch.daemon.targets.bench_classify",
    "stream": "stmwatch.daemon.targets.bench_stream",
}


def add_arguments(parser) -> None:
    add_targets(parser, TARGETS, "target")


run = run_target
