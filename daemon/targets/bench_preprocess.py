"""``stmwatch bench preprocess``: preprocessing of one scan against one UNet pass, in one run.

A simulated ``--pixels``² scan of ``--range-nm`` (default 512² of 64 nm: resampled to 640² model
pixels at Si(001):H's 0.1 nm) goes through :func:`~stmwatch.models.preprocess.prepare` (both
topography frames, the configured steps), and its model image through one UNet pass (one flip,
the configured tile, overlap and batch) with the fastest CPU backend: each ONNX Runtime backend
that can run here is timed once after its warm-up and the faster is kept (eager torch, several
times slower in ``bench segment``, only when no ONNX Runtime backend runs). Then ``--repeat``
runs of each, taken in turns; medians reported. ``ratio`` = preprocessing / UNet pass (target
<= 0.3). ``steps_ms`` splits one preprocessing run by step.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .bench_common import bench_scan, print_table, timed

HELP = "preprocessing of a 512² scan (ms) against one UNet pass with the fastest CPU backend (ratio)"
CANDIDATES = ("onnxruntime", "onnxruntime-int8")


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="TOML", help="config file ([models], [preprocess])")
    parser.add_argument("--pixels", type=int, default=512, help="scan pixels per side (512)")
    parser.add_argument("--range-nm", type=float, default=64.0, help="scan width and height in nm (64)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs of each (10)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for the UNet (0 = all cores)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def step_times(scan, surface: str, settings) -> dict[str, float]:
    """Milliseconds of each preprocessing step on ``scan``'s two topography frames (summed): the
    chain is run with one more step at a time (``fill_nan`` and ``resample``, which every chain
    has, first, as one figure) and each step gets the difference (best of 3; for orientation)."""
    import dataclasses

    from stmwatch.models.preprocess import prepare

    base = ["fill_nan", "resample"]
    others = [s for s in settings.steps if s not in base]
    times, previous = {}, 0.0
    for k in range(len(others) + 1):
        steps = [s for s in settings.steps if s in base or s in others[:k]]
        ms = min(timed(lambda: prepare(scan, surface, dataclasses.replace(settings, steps=steps))) for _ in range(3))
        times["fill_nan + resample" if k == 0 else others[k - 1]] = round(max(ms - previous, 0.0), 2)
        previous = ms
    return times


def measure(config, pixels: int = 512, range_nm: float = 64.0, repeat: int = 10, threads: int = 0) -> dict:
    from stmwatch.models.backends import BackendUnavailable, make_backend
    from stmwatch.models.load import shipped_weights
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.unet import flip_averaged_predict, load_checkpoint

    settings, surface = config.models, config.models.surface
    threads = threads or settings.threads or os.cpu_count() or 1
    scan = bench_scan(surface, pixels, range_nm)
    prepared = prepare(scan, surface, config.preprocess)
    model, _ = load_checkpoint(settings.segmenter_weights or shipped_weights(surface))

    def unet_pass(backend):
        return flip_averaged_predict(prepared.image, backend, 1, settings.tile_px, settings.tile_overlap_px,
                                     settings.batch_tiles)

    tried, notes = {}, {}
    for name in CANDIDATES:
        try:
            backend = make_backend(name, model, settings.tile_px, settings.batch_tiles, settings.engine_cache, threads)
        except BackendUnavailable as exc:
            notes[name] = str(exc)
            continue
        unet_pass(backend)  # warm-up
        tried[name] = (timed(lambda: unet_pass(backend)), backend)
    if not tried:
        import torch

        torch.set_num_threads(threads)
        backend = make_backend("torch", model, settings.tile_px)
        unet_pass(backend)
        tried["torch"] = (timed(lambda: unet_pass(backend)), backend)
    name = min(tried, key=lambda n: tried[n][0])
    backend = tried[name][1]
    prepare(scan, surface, config.preprocess)  # warm-up
    pre, unet = [], []
    for _ in range(repeat):
        pre.append(timed(lambda: prepare(scan, surface, config.preprocess)))
        unet.append(timed(lambda: unet_pass(backend)))
    ms, unet_ms = float(np.median(pre)), float(np.median(unet))
    return {"ms": round(ms, 2), "unet_ms": round(unet_ms, 2), "ratio": round(ms / unet_ms, 3),
            "backend": name, "first_pass_ms": {n: round(t, 1) for n, (t, _) in tried.items()},
            "unavailable": notes, "scan_px": [pixels, pixels], "range_nm": range_nm,
            "model_px": list(prepared.image.shape[1:]), "threads": threads, "repeat": repeat,
            "steps_ms": step_times(scan, surface, config.preprocess), "target_ratio_le_0_3": ms / unet_ms <= 0.3}


def show(result: dict) -> None:
    h, w = result["model_px"]
    print_table(
        f"Preprocessing vs one UNet pass: {result['scan_px'][0]}² scan of {result['range_nm']:g} nm -> {h}x{w} model "
        f"pixels, median of {result['repeat']}, {result['threads']} UNet threads",
        [("preprocess, both frames (ms)", f"{result['ms']:.1f}"),
         (f"one UNet pass, {result['backend']} (ms)", f"{result['unet_ms']:.1f}"),
         ("ratio (target <= 0.3)", f"{result['ratio']:.3f}"),
         *[(f"  step {k} (ms)", f"{v:.1f}") for k, v in result["steps_ms"].items()]])


def run(args) -> int:
    from stmwatch.daemon.config import load_config

    result = measure(load_config(args.config), args.pixels, args.range_nm, args.repeat, args.threads)
    if args.json:
        print(json.dumps(result))
    else:
        show(result)
    return 0
