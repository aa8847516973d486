"""``stmwatch bench classify``: crops per second of the classifier, torch against ONNX Runtime.

Both run the same embedding network (the shipped prototypical conv4, or ``--weights``) on a batch
of ``--batch`` crops on the CPU, and the prototype distances in the same way; the ratio is
measured in one run, so it holds for this machine only. The same two are timed again with the
weights' test-time augmentation (``tta``: d8 runs the network on the 8 turns and mirrors of each
crop), as ``load_classifier`` runs them (``ProtoNet.embed``, ONNX Runtime in the place of the
torch network).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import time

import numpy as np

HELP = "benchmark the few-shot classifier: crops/s for a batch on CPU, torch vs ONNX Runtime"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="prototypical weights (default: the shipped ones)")
    parser.add_argument("--batch", type=int, default=64, help="crops per forward pass")
    parser.add_argument("--repeats", type=int, default=30, help="timed batches per backend")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both backends")
    parser.add_argument("--json", action="store_true")


def _time(fn, x: np.ndarray, repeats: int) -> float:
    """Median seconds of ``fn(x)`` over ``repeats`` calls after three warm-up calls."""
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args) -> int:
    import torch

    from stmwatch.models.fewshot.classifier import WEIGHTS, onnx_embedder
    from stmwatch.models.fewshot.synthetic import SHAPES, shape_crop
    from stmwatch.models.fewshot.training import load

    torch.set_num_threads(args.threads)
    net, _, meta = load(args.weights or WEIGHTS)
    net.tta = meta.get("tta", "none")
    rng = np.random.default_rng(0)
    crops = np.stack([shape_crop(SHAPES[i % len(SHAPES)], rng) for i in range(args.batch)])
    prototypes = net.backbone(torch.from_numpy(crops[:4])).detach().numpy()

    def distances(features: np.ndarray) -> np.ndarray:
        return ((features[:, None, :] - prototypes[None]) ** 2).sum(-1)

    def embedded_by(model):
        def embed(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return distances(model.embed(torch.from_numpy(x)).numpy())
        return embed

    def with_torch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return distances(net.backbone(torch.from_numpy(x)).numpy())

    t_torch = _time(with_torch, crops, args.repeats)
    if importlib.util.find_spec("onnxruntime") is None:  # an optional extra: torch is timed alone
        import sys

        print("note: onnxruntime is not installed (pip install 'stmwatch[onnx]'): torch timed alone", file=sys.stderr)
        t_tta_torch = _time(embedded_by(net), crops, args.repeats)
        result = {"batch": args.batch, "threads": args.threads, "tta": net.tta,
                  "torch_crops_per_s": args.batch / t_torch, "torch_with_tta_crops_per_s": args.batch / t_tta_torch}
        print(json.dumps(result) if args.json else
              f"batch {args.batch}, {args.threads} threads: torch {result['torch_crops_per_s']:.0f} crops/s; with "
              f"the weights' test-time augmentation ({net.tta}): {result['torch_with_tta_crops_per_s']:.0f} crops/s")
        return 0
    embed = onnx_embedder(net.backbone, args.threads)
    agree = float(np.abs(with_torch(crops) - distances(embed(crops))).max())
    t_onnx = _time(lambda x: distances(embed(x)), crops, args.repeats)

    from stmwatch.models.fewshot.classifier import OnnxBackbone

    with_onnx = copy.deepcopy(net)  # the same network, its backbone run by ONNX Runtime
    with_onnx.backbone = OnnxBackbone(net.backbone, args.threads)

    t_tta_torch = _time(embedded_by(net), crops, args.repeats)
    t_tta_onnx = _time(embedded_by(with_onnx), crops, args.repeats)
    result = {"batch": args.batch, "threads": args.threads, "tta": net.tta,
              "torch_with_tta_crops_per_s": args.batch / t_tta_torch,
              "onnxruntime_with_tta_crops_per_s": args.batch / t_tta_onnx,
              "torch_crops_per_s": args.batch / t_torch,
              "onnxruntime_crops_per_s": args.batch / t_onnx, "onnx_over_torch": t_torch / t_onnx,
              "max_distance_difference": agree}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"batch {args.batch}, {args.threads} threads: torch {result['torch_crops_per_s']:.0f} crops/s, "
              f"ONNX Runtime {result['onnxruntime_crops_per_s']:.0f} crops/s, ratio ONNX/torch "
              f"{result['onnx_over_torch']:.2f} (distances agree to {agree:.2g}); with the weights' test-time "
              f"augmentation ({net.tta}): torch {result['torch_with_tta_crops_per_s']:.0f} crops/s, ONNX Runtime "
              f"{result['onnxruntime_with_tta_crops_per_s']:.0f} crops/s")
    return 0
