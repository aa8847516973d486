"""Milliseconds per scan for each inference backend, in one run (``stmwatch bench segment``).

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
import time

import numpy as np

log = logging.getLogger(__name__)

BENCH_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")


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
             "onnxruntime-int8": "static int8 (QDQ), up-sampling as 1x1 conv + pixel shuffle, calibrated on "
                                 "simulated scans", "tensorrt": "fp16 engine"}
    torch_ms = float(np.median(times["torch"]))
    for name in backends:
        ms = float(np.median(times[name]))
        rows[name] = {"backend": name, "ms": round(ms, 2), "ratio": round(torch_ms / ms, 2),
                      "max_abs_diff": float(np.abs(outputs[name] - outputs["torch"]).max()), "note": notes[name]}
    return [rows[name] for name in BENCH_BACKENDS]
