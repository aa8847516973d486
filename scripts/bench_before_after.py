#!/usr/bin/env python
"""``bench preprocess``'s ratio before and after a change, measured in one run (docs/performance.md).

Loads ``models/preprocess.py`` and ``models/robust.py`` as they were at ``--base`` (``git show``)
beside the current ones, and times, in turns, ``prepare`` old and new on the benchmark's scan
(512² of 64 nm) and one UNet pass (one flip, tile 256, overlap 32, batch 8) with each ONNX file
given (``--onnx OLD.onnx NEW.onnx``: e.g. the cached int8 v1 and v2 models). Prints the medians
and the ratio ``prepare / UNet pass`` of old with the first file and of new with the last.

    python scripts/bench_before_after.py --base 6882385 --onnx ~/.cache/stmwatch/engines/...-v1.onnx \
        ~/.cache/stmwatch/engines/...-v2.onnx
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def old_module(base: str, path: str, name: str, replace: dict[str, str], folder: Path):
    """The module at ``path`` as of commit ``base``, imported as ``name`` (relative imports rewritten)."""
    source = subprocess.run(["git", "show", f"{base}:{path}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    for old, new in replace.items():
        source = source.replace(old, new)
    file = folder / f"{name.rsplit('.', 1)[-1]}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    run = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run
    return lambda batch: run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="6882385", help="the commit to compare with (6882385)")
    parser.add_argument("--onnx", nargs="*", default=[], help="UNet ONNX files to time one pass of")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs of each (10)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (2)")
    args = parser.parse_args()

    from stmwatch.daemon.targets.bench_common import bench_scan
    from stmwatch.models import preprocess as new
    from stmwatch.models.unet import flip_averaged_predict

    with tempfile.TemporaryDirectory() as tmp:
        old_module(args.base, "models/robust.py", "stmwatch.models._base_robust", {}, Path(tmp))
        old = old_module(args.base, "models/preprocess.py", "stmwatch.models._base_preprocess",
                         {"from .robust import": "from stmwatch.models._base_robust import",
                          "from .surfaces import": "from stmwatch.models.surfaces import"}, Path(tmp))
    scan = bench_scan("si001h", 512, 64.0)
    image = new.prepare(scan, "si001h").image
    print("max |new - old| of prepare:", float(np.abs(new.prepare(scan, "si001h").image
                                                      - old.prepare(scan, "si001h").image).max()))
    jobs = {"prepare old": lambda: old.prepare(scan, "si001h"), "prepare new": lambda: new.prepare(scan, "si001h")}
    for path in args.onnx:
        predict = session(path, args.threads)
        jobs[f"unet {Path(path).name}"] = lambda p=predict: flip_averaged_predict(image, p, 1, 256, 32, 8)
    for job in jobs.values():
        job()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.repeat):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: float(np.median(t)) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name}: median {med[name]:.1f} ms (min {min(t):.1f}, max {max(t):.1f})")
    print(f"prepare speed-up {med['prepare old'] / med['prepare new']:.2f}x")
    if args.onnx:
        first, last = f"unet {Path(args.onnx[0]).name}", f"unet {Path(args.onnx[-1]).name}"
        print(f"ratio before (old prepare / {first}): {med['prepare old'] / med[first]:.3f}")
        print(f"ratio after (new prepare / {last}): {med['prepare new'] / med[last]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
