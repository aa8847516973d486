"""Time the UNet's inference paths on a GPU machine, in one run (the figures in the model card).

    python scripts/bench_gpu.py [--weights W] [--sizes 512 2048] [--repeat 20] [--json]

Rows: eager torch on the CPU (all cores), ONNX Runtime on the CPU, eager torch on CUDA in fp32 and
in fp16, and TensorRT fp16 through the ``tensorrt`` backend when torch-tensorrt imports (else the
reason). Same tiling as the daemon (``[models]`` tile, overlap, batch of config.toml), random input
(the cost does not depend on the values), one warm-up, then the timed runs in turns across the
rows; median ms per scan and the ratio to CPU eager torch. CUDA timings synchronise the device.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import numpy as np
import torch

from stmwatch.daemon.config import load_config
from stmwatch.models.backends import BackendUnavailable, TorchBackend, make_backend
from stmwatch.models.load import shipped_weights
from stmwatch.models.unet import load_checkpoint, tiled_predict


class HalfTorchBackend(TorchBackend):
    """Eager torch on CUDA with the weights and input in fp16 (probabilities returned as fp32)."""

    name = "torch-cuda-fp16"

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, "cuda")
        self.module = self.module.half()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device).half()
            return self.module(x).float().cpu().numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    settings = load_config(None).models
    model, _ = load_checkpoint(args.weights or shipped_weights(settings.surface))
    tile, overlap, batch = settings.tile_px, settings.tile_overlap_px, settings.batch_tiles
    runners, notes = {}, {}
    runners["torch-cpu"] = TorchBackend(copy.deepcopy(model), "cpu")  # (a backend moves its model)
    for name in ("onnxruntime", "tensorrt"):
        try:
            runners[name] = make_backend(name, copy.deepcopy(model), tile, batch, settings.engine_cache, threads)
        except BackendUnavailable as exc:
            notes[name] = f"not available: {exc}"
    if torch.cuda.is_available():
        runners["torch-cuda-fp32"] = TorchBackend(copy.deepcopy(model), "cuda")
        runners["torch-cuda-fp16"] = HalfTorchBackend(copy.deepcopy(model))
    else:
        notes["torch-cuda"] = "no CUDA GPU"
    result = {"machine": platform.processor() or platform.machine(), "cpu_threads": threads,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "torch": torch.__version__, "tile": tile, "overlap": overlap, "batch": batch, "notes": notes, "sizes": {}}
    for size in args.sizes:
        image = np.random.default_rng(0).normal(size=(model.config.in_channels, size, size)).astype(np.float32)
        outputs = {name: tiled_predict(image, r, tile, overlap, batch) for name, r in runners.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.repeat if size <= 1024 else max(3, args.repeat // 4)):
            for name, runner in runners.items():
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                tiled_predict(image, runner, tile, overlap, batch)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - t0) * 1e3)
        base = float(np.median(times["torch-cpu"]))
        result["sizes"][size] = {name: {"ms": round(float(np.median(t)), 2),
                                        "vs_torch_cpu": round(base / float(np.median(t)), 2),
                                        "max_abs_diff": float(np.abs(outputs[name] - outputs["torch-cpu"]).max())}
                                 for name, t in times.items()}
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
