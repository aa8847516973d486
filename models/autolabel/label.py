"""Auto-labelling one scan: features → k-means at several resolutions → defect clusters → mask.

All work is on the model grid (``preprocess.prepare``: 0.1 nm per model pixel, display frame);
the mask is brought back to the scan's own ``(rows, columns)`` at the end (nearest model pixel
of each scan pixel's centre).

Resolutions (``scales``): the image is shrunk by each factor (block means) and the same feature
extractor and k-means run on it, as the method feeds one network at several input sizes. At 1 (the
model scale) the clusters separate the lattice, its rows and the defects; at 4 or 8 the same
features see 0.4-0.8 nm pixels and separate terraces and domains. The defect mask is taken from
the finest scale; the coarser ones are shown in the preview and kept in :class:`AutoLabel`.

Which clusters are defects (:func:`choose_defect_clusters`, unless the user names them): the
lattice is the most common cluster; the clusters farthest from it (robust-standardised feature
units, at least ``min_distance``) are visited farthest first and taken when at least
``min_defect_share`` of their pixels lie in components of defect size and shape and when they
still fit the budget (together at most ``max_share`` of the valid pixels: defects are rare); one
that would break the budget is passed over (``skip_over_budget``), not the end. The union of the defect clusters is then split into
8-connected components and only those of defect size and shape are kept
(``min_area_nm2``–``max_area_nm2``, elongation below ``max_elongation``).
Ghost copies made by a double tip are dropped (or moved onto the real feature) as in the UNet
segmenter (``double_tip.resolve_double_tip``).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from stmwatch.drivers.scan import Scan

from ..double_tip import DoubleTip, resolve_double_tip
from ..preprocess import Prepared, PreprocessSettings, prepare
from ..segment import label_components
from ..surfaces import Surface, get_surface
from . import DEFAULT_K
from .features import Features, FilterBank
from .kmeans import kmeans

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Rule:
    """The automatic choice of defect clusters and components (see the module docstring)."""

    max_share: float = 0.015  # of the valid pixels, all defect clusters together
    min_distance: float = 1.5
    min_area_nm2: float = 0.05
    max_area_nm2: float = 3.0
    max_elongation: float = 3.0
    min_defect_share: float = 0.5  # of a cluster's pixels in defect-sized components
    skip_over_budget: bool = True  # a cluster that would break max_share is passed over (False: stop there)


@dataclasses.dataclass
class AutoLabel:
    """The result for one scan. ``clusters[i]`` is the ``(H, W)`` int cluster map (−1 where the scan
    has no data) at ``scales[i]``, upsampled to the model grid; ``defect_clusters`` are the chosen
    clusters of the finest scale; ``model_mask`` ``(H, W)`` bool on the model grid; ``mask``
    ``(rows, columns)`` uint8 on the scan's own grid (display frame, 1 = defect)."""

    prepared: Prepared
    scales: tuple[int, ...]
    clusters: list[np.ndarray]
    centres: list[np.ndarray]
    defect_clusters: tuple[int, ...]
    model_mask: np.ndarray
    mask: np.ndarray
    double_tip: DoubleTip | None = None


# ---- components ------------------------------------------------------------------------------------
def component_stats(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For components ``1..n`` of ``labels``: area (px), centroid row, centroid col, elongation
    (square root of the ratio of the principal second moments, ≥ 1); arrays indexed by label (0 unused)."""
    flat = labels.ravel()
    rr, cc = np.indices(labels.shape)
    rr, cc = rr.ravel().astype(float), cc.ravel().astype(float)
    area = np.bincount(flat, minlength=n + 1).astype(float)
    a = np.maximum(area, 1)
    mr = np.bincount(flat, rr, minlength=n + 1) / a
    mc = np.bincount(flat, cc, minlength=n + 1) / a
    vrr = np.bincount(flat, rr * rr, minlength=n + 1) / a - mr**2 + 1 / 12
    vcc = np.bincount(flat, cc * cc, minlength=n + 1) / a - mc**2 + 1 / 12
    vrc = np.bincount(flat, rr * cc, minlength=n + 1) / a - mr * mc
    half = np.sqrt(np.maximum(((vrr - vcc) / 2) ** 2 + vrc**2, 0))
    big, small = (vrr + vcc) / 2 + half, np.maximum((vrr + vcc) / 2 - half, 1e-6)
    return area, mr, mc, np.sqrt(big / small)


def defect_sized(mask: np.ndarray, rule: Rule, nm_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, keep)``: the 8-connected components of ``mask`` and, per label, whether it has a
    defect's size and shape under ``rule``."""
    labels, n = label_components(mask)
    area, _, _, elongation = component_stats(labels, n)
    area_nm2 = area * nm_per_px**2
    keep = (area_nm2 >= rule.min_area_nm2) & (area_nm2 <= rule.max_area_nm2) & (elongation <= rule.max_elongation)
    keep[0] = False
    return labels, keep


def choose_defect_clusters(clusters: np.ndarray, centres: np.ndarray, rule: Rule, nm_per_px: float) -> tuple[int, ...]:
    """The automatic rule (module docstring) on one cluster map ``(H, W)`` (−1: no data): the
    clusters at least ``min_distance`` from the lattice's (the most common cluster) are visited
    farthest first; each with at least ``min_defect_share`` of its pixels in components of defect
    size and shape is taken if the chosen ones together still cover at most ``max_share`` of the
    valid pixels (else passed over, or the visit ends when ``skip_over_budget`` is False)."""
    k = len(centres)
    counts = np.bincount(clusters[clusters >= 0], minlength=k).astype(float)
    lattice = int(np.argmax(counts))
    share = counts / max(counts.sum(), 1)
    distance = np.linalg.norm(centres - centres[lattice], axis=1)
    chosen, total = [], 0.0
    for j in np.argsort(-distance):
        if j == lattice or distance[j] < rule.min_distance:
            break
        if total + share[j] > rule.max_share:
            if rule.skip_over_budget:
                continue
            break
        if share[j] == 0:
            continue
        if rule.min_defect_share > 0:
            labels, keep = defect_sized(clusters == j, rule, nm_per_px)
            if keep[labels].sum() < rule.min_defect_share * counts[j]:
                continue
        chosen.append(int(j))
        total += share[j]
    log.debug("clusters: share %s, distance %s → defects %s", np.round(share, 3), np.round(distance, 2), chosen)
    return tuple(sorted(chosen))


# ---- resolutions -----------------------------------------------------------------------------------
def shrink(image: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Block means of ``image`` ``(C, H, W)`` over ``factor``² pixels (edges padded by replication);
    a block is valid when most of it is."""
    if factor == 1:
        return image, valid
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    v = torch.from_numpy(valid.astype(np.float32))[None, None]
    h, w = image.shape[1:]
    pad = (0, -w % factor, 0, -h % factor)
    x, v = F.pad(x, pad, mode="replicate"), F.pad(v, pad, mode="replicate")
    return F.avg_pool2d(x, factor)[0].numpy(), F.avg_pool2d(v, factor)[0, 0].numpy() > 0.5


def grow(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a label map by ``factor``, cut to ``shape``."""
    if factor == 1:
        return labels
    return np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)[:shape[0], :shape[1]]


MIN_PIXELS_PER_CLUSTER = 180  # 1.8 nm² at 0.1 nm/px: a small frame gets fewer clusters


def cluster_map(features: np.ndarray, valid: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the valid pixels of ``features`` ``(F, H, W)`` → ``(labels (H, W), −1 invalid;
    centres (k', F))``, with k' = ``k`` but at most one cluster per :data:`MIN_PIXELS_PER_CLUSTER`
    valid pixels: on a frame of a few hundred pixels, 32 clusters would tile it into blocks, some
    small enough to pass for defects. At the model scale every held-out and tuning scan (154²
    model pixels or more) keeps k = 32, and so does every full training scan (77² or more); only
    an aborted small one gets fewer."""
    x = features[:, valid].T
    centres, labels = kmeans(x, max(1, min(k, len(x) // MIN_PIXELS_PER_CLUSTER)), seed=seed)
    out = np.full(valid.shape, -1, dtype=np.int64)
    out[valid] = labels
    return out, centres


# ---- the whole chain ---------------------------------------------------------------------------------
def to_scan_mask(model_mask: np.ndarray, prepared: Prepared, shape: tuple[int, int]) -> np.ndarray:
    """The model-grid mask on the scan's ``(rows, columns)`` grid: each scan pixel takes the model
    pixel its centre falls in; uint8."""
    rows, cols = prepared.from_scan(np.arange(shape[0]), np.arange(shape[1]))
    r = np.clip(np.rint(rows).astype(int), 0, model_mask.shape[0] - 1)
    c = np.clip(np.rint(cols).astype(int), 0, model_mask.shape[1] - 1)
    return model_mask[np.ix_(r, c)].astype(np.uint8)


def autolabel(scan: Scan, surface: Surface | str, *, features: Features | None = None, k: int = DEFAULT_K,
              scales: Sequence[int] = (1, 4), defect_clusters: Sequence[int] | None = None, rule: Rule | None = None,
              remove_ghosts: bool = True, preprocess: PreprocessSettings | None = None, seed: int = 0) -> AutoLabel:
    """Auto-label ``scan``: see the module docstring. ``defect_clusters`` (of the finest scale)
    replaces the automatic rule; ``k`` clusters at every scale."""
    surface = get_surface(surface) if isinstance(surface, str) else surface
    features = features or FilterBank(surface.nm_per_px)
    rule = rule or Rule()
    scales = tuple(sorted({int(s) for s in scales}))
    if not scales or scales[0] < 1:
        raise ValueError(f"scales must be integers ≥ 1, not {scales}")
    prepared = prepare(scan, surface, preprocess)
    valid = prepared.valid
    shape = valid.shape
    maps, all_centres = [], []
    for factor in scales:
        image, ok = shrink(prepared.image, valid, factor)
        if not ok.any():
            raise ValueError(f"{scan.name}: no valid pixels at scale {factor}")
        extractor = features
        if factor > 1 and isinstance(features, FilterBank):
            extractor = FilterBank(features.nm_per_px, features.sigmas_nm, features.terrace_nm, edges=True, soft=1.0, texture=True)
        labels, centres = cluster_map(extractor(image, ok), ok, k, seed)
        labels = np.where(valid, grow(labels, factor, shape), -1)
        maps.append(labels)
        all_centres.append(centres)
    finest, nm = maps[0], surface.nm_per_px * scales[0]
    if defect_clusters is None:
        chosen = choose_defect_clusters(finest, all_centres[0], rule, nm)
    else:
        chosen = tuple(int(j) for j in defect_clusters)
        bad = [j for j in chosen if not 0 <= j < len(all_centres[0])]
        if bad:
            raise ValueError(f"defect clusters {bad} do not exist (k = {len(all_centres[0])}: 0-{len(all_centres[0]) - 1})")
    labels, keep = defect_sized(np.isin(finest, chosen) & valid, rule, surface.nm_per_px)
    model_mask = keep[labels]
    found = None
    if remove_ghosts and model_mask.any():
        model_mask, found = _drop_ghosts(model_mask, labels * model_mask, prepared, surface.nm_per_px)
    mask = to_scan_mask(model_mask, prepared, scan.shape)
    return AutoLabel(prepared, scales, maps, all_centres, chosen, model_mask, mask, found)


def _drop_ghosts(mask: np.ndarray, labels: np.ndarray, prepared: Prepared,
                 nm_per_px: float) -> tuple[np.ndarray, DoubleTip | None]:
    """Remove a double tip's ghost components from ``mask`` (moving a lone ghost's pixels onto its
    real feature's place), as :meth:`UNetSegmenter.defects_from` does with detections."""
    ids = np.unique(labels[labels > 0])
    area, mr, mc, _ = component_stats(labels, int(labels.max()))
    points = np.stack([mr[ids], mc[ids]], axis=1)
    found = resolve_double_tip(points, area[ids], prepared.image[0], prepared.valid, nm_per_px=nm_per_px)
    if found is None:
        return mask, None
    mask = mask.copy()
    for k in found.ghosts:
        mask[labels == ids[k]] = False
    for k, row, col in found.moved:
        rr, cc = np.nonzero(labels == ids[k])
        rr = np.rint(rr + row - mr[ids[k]]).astype(int)
        cc = np.rint(cc + col - mc[ids[k]]).astype(int)
        inside = (rr >= 0) & (rr < mask.shape[0]) & (cc >= 0) & (cc < mask.shape[1])
        mask[labels == ids[k]] = False
        mask[rr[inside], cc[inside]] = True
    return mask, found
