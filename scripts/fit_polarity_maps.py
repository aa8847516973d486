"""Fit the few-shot classifier's polarity maps (models/fewshot/polarity.py) and ship them.

For each surface imaged at both polarities (not TiO2(110): filled states only), ``--scans``
training-style samples are imaged at -|V| and +|V|; their defect crops are embedded by the
shipped network as the daemon embeds them (its test-time augmentation included), and a ridge map
is fitted each way. Writes ``--out`` (default models/weights/fewshot_polarity.npz) and names it,
with its sha256 prefix, in the weights' meta (``polarity_maps``), which changes the weights file (and
so the classifier's version).
The simulator's training style only: no foreign scan, no evaluation scan. About 2 minutes in all
on the 2-core VM (400 scans per surface).

    python scripts/fit_polarity_maps.py                      # the shipped maps (seed 29000)
    python scripts/fit_polarity_maps.py --scans 40 --out /tmp/maps.npz --no-meta
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from stmwatch.models.fewshot.classifier import WEIGHTS, file_version, load_classifier
from stmwatch.models.fewshot.look_crops import paired_polarity_crops
from stmwatch.models.fewshot.polarity import RIDGE, embedding_fingerprint, fit_map, map_key, save_maps
from stmwatch.models.surfaces import SURFACES

log = logging.getLogger("fit_polarity_maps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--out", type=Path, default=None, help="default: fewshot_polarity.npz beside the weights")
    parser.add_argument("--scans", type=int, default=400, help="paired samples per surface (default 400)")
    parser.add_argument("--seed", type=int, default=29000)
    parser.add_argument("--ridge", type=float, default=RIDGE)
    parser.add_argument("--no-meta", action="store_true", help="do not name the maps in the weights' meta")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or args.weights.parent / "fewshot_polarity.npz"

    maps, net = {}, None
    for surface, facts in SURFACES.items():
        if facts.filled_only:
            continue
        # the network as the daemon loads it: its crop normalisation and test-time augmentation
        classifier = load_classifier(surface, weights=args.weights, backend="torch", polarity_maps=False).base
        net = classifier.net

        @torch.no_grad()
        def embed(crops: np.ndarray) -> np.ndarray:
            return net.embed(torch.from_numpy(classifier.model_input(crops))).numpy()

        filled, empty = [], []
        for i in range(args.scans):
            seed = int(np.random.SeedSequence([args.seed, i]).generate_state(1)[0] & 0x7FFFFFFF)
            f, e, _ = paired_polarity_crops(surface, seed)
            if len(f):
                filled.append(embed(f))
                empty.append(embed(e))
        filled, empty = np.concatenate(filled), np.concatenate(empty)
        maps[map_key(surface, +1)] = fit_map(filled, empty, args.ridge)
        maps[map_key(surface, -1)] = fit_map(empty, filled, args.ridge)
        log.info("%s: %d paired crops", surface, len(filled))
    save_maps(out, maps, embedding_fingerprint(net.backbone), net.tta)
    log.info("wrote %s (%s)", out, ", ".join(maps))
    if not args.no_meta:
        ckpt = torch.load(args.weights, map_location="cpu", weights_only=True)
        ckpt["meta"] = {**ckpt["meta"], "polarity_maps": out.name, "polarity_maps_sha256": file_version(out),
                        "polarity_maps_fit": {"scans": args.scans, "seed": args.seed, "ridge": args.ridge}}
        torch.save(ckpt, args.weights)
        log.info("named in %s's meta", args.weights)


if __name__ == "__main__":
    main()
