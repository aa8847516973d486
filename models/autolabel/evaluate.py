"""Score auto-label masks against the simulator's truth, with the segmenter's own scoring.

A mask is read as detections the way the issue defines it: each 8-connected component of the
``(rows, columns)`` scan-grid mask is one defect at its centroid (scan display pixels →
``Scan.pixel_to_scanner``), matched to the true defects within 0.5 nm by
``eval_segment.DetectionScore`` / ``match_points`` on the same held-out scans
(``eval_segment.held_out_scan``: seeds from ``HELD_OUT_SEED``, every artefact on).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..eval_segment import (HELD_OUT_SEED, MATCH_RADIUS_NM, DetectionScore, held_out_scan, score_record,
                            truth_points_m)
from ..segment import find_components

log = logging.getLogger(__name__)


def mask_centroids(mask: np.ndarray, min_area: int = 1) -> np.ndarray:
    """``(n, 2)`` row/col centroids (pixels of ``mask``'s grid) of its 8-connected components."""
    components, _ = find_components(np.asarray(mask, dtype=float), 0.5, min_area)
    return np.array([(c.row, c.col) for c in components], dtype=float).reshape(-1, 2)


def mask_points_m(scan, mask: np.ndarray) -> np.ndarray:
    """The mask's components as scanner-frame points ``(n, 2)`` metres."""
    centres = mask_centroids(mask)
    if len(centres) == 0:
        return np.zeros((0, 2))
    xs, ys = scan.pixel_to_scanner(centres[:, 0], centres[:, 1])
    return np.stack([xs, ys], axis=1)


def evaluate_autolabel(surfaces: list[str], n_scans: int, *, seed: int = HELD_OUT_SEED, k: int | None = None,
                       scales=(1, 4), features: str = "filters", artefacts: str = "all",
                       radius_nm: float = MATCH_RADIUS_NM, detector: str | None = None,
                       confident: float | None = None) -> dict[str, dict]:
    """Precision, recall and F1 of the automatic auto-labels per surface on ``n_scans`` held-out
    scans (``held_out_scan(surface, i, seed)``, i = 0..n-1): the cluster rule's, or with
    ``detector`` (a planted-defect detector trained on other, unlabelled scans: ``stmwatch
    autolabel``'s ``OUT/detector`` folder, or a file of it) its masks (:func:`.planted.detector_mask`)."""
    from . import CONFIDENT, DEFAULT_K
    from .features import make_features
    from .label import autolabel
    from .planted import detector_mask, detector_segmenter

    extractor = make_features(features)
    confident = CONFIDENT if confident is None else confident
    results = {}
    for key in surfaces:
        score, t0 = DetectionScore(), time.perf_counter()
        segment = detector_segmenter(detector, key, confident) if detector else None
        for i in range(n_scans):
            scan, truth = held_out_scan(key, i, seed, artefacts=artefacts)
            if segment is not None:
                mask, _ = detector_mask(scan, segment, confident)
            else:
                mask = autolabel(scan, key, features=extractor, k=k or DEFAULT_K, scales=scales).mask
            score.add(mask_points_m(scan, mask), truth_points_m(scan, truth), radius_nm * 1e-9)
        results[key] = score_record(score, n_scans, t0)
        log.info("%s: %s", key, results[key])
    return results
