"""``stmwatch bench segment``: ms per scan for each segmentation backend and the ratio to eager
torch, measured in one run (the timing: :mod:`stmwatch.models.bench_segment`)."""
from __future__ import annotations

import os

import numpy as np

from stmwatch.models.settings import TEST_TIME_FLIPS

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


def run(args) -> int:
    import json

    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from stmwatch.daemon.config import load_config
    from stmwatch.models.bench_segment import bench
    from stmwatch.models.load import shipped_weights
    from stmwatch.models.unet import load_checkpoint

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
