"""``stmwatch bench all``: every benchmark in one go, shortened to fit in a few minutes.

Runs ``segment`` (one flip, 2 timed runs per backend), ``classify`` (10 batches), ``preprocess`` (5),
``pipeline`` (3 scans) and ``stream`` (2 scans), each with its own defaults otherwise and each
printing its table; with ``--json``, one JSON object ``{target: figures, ..., "seconds": {...}}``.
Every figure is a ratio or a delay measured within its own run, so runs on a loaded machine are
comparable only as ratios. Target: the whole run in under 5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import time

HELP = "run every benchmark (segment, classify, preprocess, pipeline, stream), shortened"
SHORT = {  # target -> (module, arguments that keep it short)
    "segment": ("stmwatch.daemon.targets.bench_segment", ["--repeat", "2", "--flips", "1"]),
    "classify": ("stmwatch.daemon.targets.bench_classify", ["--repeats", "10"]),
    "preprocess": ("stmwatch.daemon.targets.bench_preprocess", ["--repeat", "5"]),
    "pipeline": ("stmwatch.daemon.targets.bench_pipeline", ["--scans", "3"]),
    "stream": ("stmwatch.daemon.targets.bench_stream", []),
}


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="TOML", help="config file, passed to every benchmark that takes one")
    parser.add_argument("--only", nargs="+", choices=list(SHORT), help="run these benchmarks only")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")


def _arguments(module, extra: list[str], config: str | None, as_json: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    argv = list(extra)
    if config and any(a.dest == "config" for a in parser._actions):
        argv += ["--config", config]
    if as_json:
        argv.append("--json")
    return parser.parse_args(argv)


def run(args) -> int:
    results, seconds, failed = {}, {}, []
    t_all = time.perf_counter()
    for name in args.only or list(SHORT):
        module_name, extra = SHORT[name]
        module = importlib.import_module(module_name)
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            if args.json:
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    code = module.run(_arguments(module, extra, args.config, True))
                lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
                results[name] = json.loads(lines[-1]) if lines else {"error": "no JSON output"}
            else:
                print()
                code = module.run(_arguments(module, extra, args.config, False))
            if code:
                failed.append(name)
        except Exception as exc:  # one benchmark failing must not hide the others
            failed.append(name)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"bench {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        seconds[name] = round(time.perf_counter() - t0, 1)
    seconds["total"] = round(time.perf_counter() - t_all, 1)
    if args.json:
        print(json.dumps({**results, "seconds": seconds, "failed": failed}))
    else:
        print(f"\nseconds per benchmark: {seconds}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0
