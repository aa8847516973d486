"""Training crops cut the way the daemon cuts them: from whole simulated scans (training style),
through ``preprocess.prepare`` and the segmenter's ``crops_at``, at each true defect (plus a small
random offset, as a detected centroid has), each normalised on its own (:func:`normalise_crop`).

The crops of :func:`stmwatch.models.sim.simulate.make_crops` come from tiny 64² scenes, plane
levelled and normalised per crop, without the daemon's preprocessing chain; the classifier then
meets crops from ``prepare`` (row alignment, scar repair, scan-wide normalisation, clipping) that
it never saw. These crops close that gap. Only the *training* style is drawn here (the foreign
style is for measuring).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .crops import normalise_crop

log = logging.getLogger(__name__)


def scan_crops(surface: str, seed: int, jitter_px: float = 1.0, pixels: int = 256):
    """``[(class, crop), ...]`` of one simulated training-style scan of ``surface`` (random
    artefacts and bias, as ``stmwatch simulate``): one ``(2, 32, 32)`` float32 crop per true defect
    whose centre lies on an acquired line, cut at the defect's model pixel moved by up to
    ``jitter_px`` in each axis, each crop normalised on its own."""
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.sim.artefacts import Artefacts
    from stmwatch.models.sim.simulate import simulate_scan
    from stmwatch.models.surfaces import get_surface

    rng = np.random.default_rng([seed, 23])
    surf = get_surface(surface)
    scan, truth = simulate_scan(surface, int(rng.integers(0, 2**31 - 1)), pixels=(pixels, pixels),
                                range_nm=pixels * surf.nm_per_px, artefacts=Artefacts.random(rng), style="training")
    return crops_at_truth(prepare(scan, surf), truth, rng, jitter_px)


def crops_at_truth(prepared, truth, rng: np.random.Generator, jitter_px: float = 1.0):
    """``[(class, crop), ...]``: one crop of ``prepared`` (``preprocess.prepare``'s output) per
    true defect of ``truth`` whose centre lies on an acquired line, cut at the defect's model pixel
    moved by up to ``jitter_px`` in each axis (drawn from ``rng``), normalised on its own."""
    from stmwatch.models.segment import crops_at

    out = []
    for d in truth.defects:
        r, c = prepared.from_scan(d.row, d.col)
        r, c = float(r) + rng.uniform(-jitter_px, jitter_px), float(c) + rng.uniform(-jitter_px, jitter_px)
        ri, ci = int(round(r)), int(round(c))
        if not (0 <= ri < prepared.valid.shape[0] and 0 <= ci < prepared.valid.shape[1]) or not prepared.valid[ri, ci]:
            continue
        out.append((d.cls, normalise_crop(crops_at(prepared.image, [r], [c])[0])))
    return out


def make_scan_crops(out_dir: str | Path, surfaces: list[str], scans: int, seed: int, per_class: int | None = None,
                    progress=None) -> dict[str, dict[str, int]]:
    """Write ``<out_dir>/<surface>/<class>/<n>.npy`` from ``scans`` simulated scans per surface
    (scan ``i`` of surface ``s`` drawn with seed ``[seed, s, i]``), at most ``per_class`` crops per
    class. Returns the counts written."""
    out = Path(out_dir)
    counts: dict[str, dict[str, int]] = {}
    for si, surface in enumerate(surfaces):
        counts[surface] = {}
        for i in range(scans):
            scan_seed = int(np.random.SeedSequence([seed, si, i]).generate_state(1)[0] & 0x7FFFFFFF)
            for cls, crop in scan_crops(surface, scan_seed):
                n = counts[surface].get(cls, 0)
                if per_class is not None and n >= per_class:
                    continue
                folder = out / surface / cls
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{n:05d}.npy", crop)
                counts[surface][cls] = n + 1
            if progress is not None:
                progress(surface, i + 1, scans)
        log.info("scan crops of %s: %s", surface, counts[surface])
    return counts
