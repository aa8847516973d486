"""``stmwatch bench segment|classify|preprocess|pipeline|stream|all``: speed, reported as ratios
measured in one run."""
from __future__ import annotations

from ._dispatch import add_targets, run_target

HELP = "benchmark segmentation backends, classification, preprocessing, the pipeline and the live stream"
TARGETS = {
    "segment": "stmwatch.models.bench_segment",
    "classify": "stmwatch.models.fewshot.bench",
    "preprocess": "stmwatch.daemon.bench.preprocess",
    "pipeline": "stmwatch.daemon.bench.pipeline",
    "stream": "stmwatch.daemon.bench_stream",
    "all": "stmwatch.daemon.bench.all",
}


def add_arguments(parser) -> None:
    add_targets(parser, TARGETS, "target")


run = run_target
