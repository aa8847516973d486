"""``stmwatch bench segment``: milliseconds per scan for each inference backend, in one run.

The input is one model-scale scan of ``--size``² pixels and 2 channels (default 512², what a 51.2 nm
frame becomes), random normal values (the UNet's cost does not depend on them). Every backend runs
the same tiled inference (:func:`~stmwatch.models.unet.flip_averaged_predict`, ``[models]`` tile,
overlap, batch and ``test_time_flips``: the cost of one scan as the daemon segments it; ``--flips 1``
times a single UNet pass) on it: one warm-up, then ``--repeat`` timed runs taken in turns across the backends,
median reported with its ratio to eager torch (> 1 = faster). A backend that cannot run here is listed with the reason. The outputs
are also compared with eager torch (max |Δprob|).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from .settings import TEST_TIME_FLIPS

log = logging.getLogger(__name__)

BENCH_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
HELP = "ms per 512² 2-channel scan for each segmentation backend, and the ratio to eager torch"


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, default=512, help="scan side in model pixels (default 512)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per backend (default 10)")
    parser.add_argument("--weights", help="UNet checkpoint (default: the shipped weights)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0 = all cores)")
    parser.add_argument("--config", metavar="TOML", help="config file for tile size, overlap, batch and flips")
    parser.add_argument("--flips", type=int, choices=TEST_TIME_FLIPS,
                        help="test-time flips averaged per scan (default: [models] test_time_flips)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def bench(model, image: np.ndarray, tile: int, overlap: int, batch: int, repeat: int, threads: int,
          cache_dir: str | None = None, flips: int = 1) -> list[dict]:
    """One row per backend: name, ms (median), ratio to eager torch, max |Δprob| to torch, note.

    Each backend runs once to warm up; then the timed runs go round the backends in turn
    (torch, onnxruntime, ..., torch, onnxruntime, ...), so that a change in the machine's load
    during the run falls on all of them alike.
    """
    from .backends import BackendUnavailable, make_backend
    from .unet import flip_averaged_predict

    def predict(backend):
        return flip_averaged_predict(image, backend, flips, tile, overlap, batch)

    rows, backends, outputs = {}, {}, {}
    for name in BENCH_BACKENDS:
        try:
            backends[name] = make_backend(name, model, tile, batch, cache_dir, threads)
            outputs[name] = predict(backends[name])  # warm-up
        except BackendUnavailable as exc:
            rows[name] = {"backend": name, "ms": None, "ratio": None, "max_abs_diff": None,
                          "note": f"not available: {exc}"}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(repeat):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            predict(backend)
            times[name].append((time.perf_counter() - t0) * 1e3)
    notes = {"torch": "eager, eval mode", "onnxruntime": "graph optimisation ALL, BatchNorm folded",
             "onnxruntime-int8": "static int8 (QDQ), calibrated on simulated scans", "tensorrt": "fp16 engine"}
    torch_ms = float(np.median(times["torch"]))
    for name in backends:
        ms = float(np.median(times[name]))
        rows[name] = {"backend": name, "ms": round(ms, 2), "ratio": round(torch_ms / ms, 2),
                      "max_abs_diff": float(np.abs(outputs[name] - outputs["torch"]).max()), "note": notes[name]}
    return [rows[name] for name in BENCH_BACKENDS]


def run(args) -> int:
    import json

    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from stmwatch.daemon.config import load_config

    from .load import shipped_weights
    from .unet import load_checkpoint

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    settings = load_config(args.config).models
    model, _ = load_checkpoint(args.weights or settings.segmenter_weights or shipped_weights(settings.surface))
    image = np.random.default_rng(0).normal(size=(model.config.in_channels, args.size, args.size)).astype(np.float32)
    flips = args.flips or settings.test_time_flips
    rows = bench(model, image, settings.tile_px, settings.tile_overlap_px, settings.batch_tiles, args.repeat,
                 threads, settings.engine_cache, flips)
    if args.json:
        print(json.dumps({"size": args.size, "threads": threads, "flips": flips, "rows": rows}))
        return 0
    table = Table(title=f"UNet on one {args.size}x{args.size} 2-channel scan: tile {settings.tile_px}, overlap "
                        f"{settings.tile_overlap_px}, batch {settings.batch_tiles}, {flips} flip(s) averaged, "
                        f"{threads} threads, median of {args.repeat}", title_justify="left")
    for name in ("backend", "ms / scan", "vs eager torch", "max |dprob|", "notes"):
        table.add_column(name, justify="right" if name in ("ms / scan", "vs eager torch", "max |dprob|") else "left")
    for r in rows:
        table.add_row(r["backend"], "-" if r["ms"] is None else f"{r['ms']:.1f}",
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                      "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}", escape(r["note"]))
    Console().print(table)
    return 0
