"""``stmwatch bench segment|classify|preprocess|pipeline|stream|autolabel|all``: speed, reported as ratios
measured in one run."""
from __future__ import annotations

from ._dispatch import add_targets, run_target

HELP = "benchmark segmentation backends, classification, preprocessing, the pipeline, the live stream and auto-labelling"
TARGETS = {
    "segment": "stmwatch.daemon.targets.bench_segment",
    "classify": "stmwatch.daemon.targets.bench_classify",
    "preprocess": "stmwatch.daemon.targets.bench_preprocess",
    "pipeline": "stmwatch.daemon.targets.bench_pipeline",
    "stream": "stmwatch.daemon.targets.bench_stream",
    "all": "stmwatch.daemon.targets.bench_all",
    "autolabel": "stmwatch.daemon.targets.bench_autolabel",
}


def add_arguments(parser) -> None:
    add_targets(parser, TARGETS, "target")


run = run_target
