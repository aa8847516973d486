"""``stmwatch eval fewshot``: accuracy ± 95 % CI over episodes, or the method's two tables."""
from __future__ import annotations

import argparse
import json

HELP = "evaluate a few-shot classifier: mean accuracy and 95 % CI over N-way K-shot episodes"
DESCRIPTION = """Evaluate a few-shot method with the method's protocol: N-way K-shot episodes drawn (with --seed)
from crops <data>/<surface>/<class>/*, mean accuracy over the episodes and the half-width of its
95 % confidence interval (--json: keys 'accuracy' and 'ci95', as fractions).

--weights is a file written by 'stmwatch train fewshot' (default for proto: the shipped weights);
pixel_nn needs none. --tta (prototypical network only) averages each crop's embedding over its
mirror images (flips) or all eight turns and mirrors (d8); default: the checkpoint's meta 'tta',
else none. --weights may name several proto checkpoints, comma-separated: an ensemble whose
embedding is their L2-normalised embeddings side by side. --table instead trains and evaluates all six rows of the method's tables on
the simulator's surfaces and writes them as Markdown (see docs/fewshot.md)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="crop folder <data>/<surface>/<class>/*")
    parser.add_argument("--surface", default="si001h")
    parser.add_argument("--method", default="proto", choices=("proto", "matching", "relation", "simpleshot",
                                                              "pixel_nn"))
    parser.add_argument("--weights", help="trained weights (default for proto: the shipped ones)")
    parser.add_argument("--tta", choices=("none", "flips", "d8"),
                        help="proto: test-time augmentation of the embedding (default: the checkpoint's, else none)")
    parser.add_argument("--way", type=int, default=4)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--query", type=int, default=15, help="query crops per class per episode")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode draw")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    table = parser.add_argument_group("--table (reproduce the method's tables)")
    table.add_argument("--table", action="store_true", help="train and evaluate all six rows, write Markdown")
    table.add_argument("--work", default="fewshot-table", help="--table: folder for crops and weights")
    table.add_argument("--out-md", default="docs/fewshot_table.md", help="--table: Markdown file to write")
    table.add_argument("--train-episodes", type=int, default=1500, help="--table: training episodes per model")
    table.add_argument("--per-class", type=int, default=1200, help="--table: simulated training crops per class")
    table.add_argument("--jobs", type=int, default=1, help="--table: processes (one per table, 1 thread each)")


def run(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    if args.table:
        from stmwatch.models.fewshot.table import run_table

        return run_table(args)
    if not args.data:
        raise SystemExit("eval fewshot: --data is needed (or --table)")
    from stmwatch.models.fewshot.classifier import WEIGHTS
    from stmwatch.models.fewshot.crops import load_surface
    from stmwatch.models.fewshot.evaluation import evaluate
    from stmwatch.models.fewshot.registry import build_method
    from stmwatch.models.fewshot.training import load

    if args.method == "pixel_nn":
        method = build_method("pixel_nn")
    else:
        weights = args.weights or (WEIGHTS if args.method == "proto" else None)
        if weights is None:
            raise SystemExit(f"eval fewshot: --weights is needed for {args.method}")
        loaded = [load(w) for w in str(weights).split(",")]
        for w, (_, config, _) in zip(str(weights).split(","), loaded):
            if config.method != args.method:
                raise SystemExit(f"{w} holds a {config.method} network, not {args.method}")
        if args.method == "proto":
            from stmwatch.models.fewshot.proto import ProtoEnsemble

            for net, _, meta in loaded:
                net.tta = args.tta or meta.get("tta", "none")
            method = loaded[0][0] if len(loaded) == 1 else ProtoEnsemble([net for net, _, _ in loaded])
        elif len(loaded) > 1:
            raise SystemExit("eval fewshot: several --weights only for proto")
        else:
            method = loaded[0][0]
    result = evaluate(method, load_surface(args.data, args.surface), args.way, args.shot, args.query, args.episodes,
                      args.seed)
    result["method"] = args.method
    if args.method == "proto":
        result["tta"] = method.tta
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.method} on {args.surface}, {result['way']}-way {result['shot']}-shot, {result['episodes']} "
              f"episodes: {100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f} %")
    return 0
