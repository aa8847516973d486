"""Double-tip ghosts: find the second apex's offset in one scan and drop the copies it made.

A tip with two apexes images every feature twice: once under the apex nearer the surface and
again, a little fainter, under the second apex, at a fixed displacement for the whole scan
(typically 0.5-2 nm). A segmenter that looks at a few nm at a time marks both copies, so every
defect is counted twice. The displacement is the same for every defect of the scan, which a
local network does not see but the list of detections does: many pairs of detections share one
displacement vector, while the displacements between independent defects are spread out.

:func:`find_double_tip` looks for that shared vector among the pairwise displacements of the
detections (model pixels, display frame: ``(row, col)``, row 0 at the top); when enough pairs
share it, one detection of each pair is a ghost. Which side is the ghost is decided once per
scan, by a vote over the pairs: the ghost is the copy with the smaller *mass* (sum of defect
probability over the component), which is right for ~80 % of single pairs on simulated scans
when the second apex is ≥ 0.013 nm further from the surface. With two apexes at the same height
the two copies are the same image and no method can say which is "real": then half of the kept
positions are off by the offset, but each defect is still counted once.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DoubleTip:
    """A double tip found in one scan. ``offset_px`` ``(rows, cols)`` model pixels (display frame)
    goes from each kept copy to its ghost; ``pairs`` detections were paired at it and the
    ``ghosts`` indices (into the detection list given) were the fainter copies."""

    offset_px: tuple[float, float]
    pairs: int
    ghosts: tuple[int, ...]


def _canonical(v: np.ndarray) -> np.ndarray:
    """Each displacement ``(n, 2)`` or its negative, whichever points into the half plane
    ``row > 0`` (or ``row == 0, col > 0``), so ``v`` and ``-v`` fall together."""
    flip = (v[:, 0] < 0) | ((v[:, 0] == 0) & (v[:, 1] < 0))
    return np.where(flip[:, None], -v, v)


def _densest(v: np.ndarray, tol: float, reach: float) -> np.ndarray:
    """The mean of the vectors ``v`` ``(m, 2)`` around their densest spot: the most populated
    3 × 3 block of a histogram with bins of ``tol`` (``|v| <= reach``), refined to the mean of the
    vectors within ``tol`` of the block's mean."""
    bins = max(1, int(np.ceil(2 * reach / tol)))
    hist, r_edges, c_edges = np.histogram2d(v[:, 0], v[:, 1], bins=bins, range=[[-reach, reach], [-reach, reach]])
    padded = np.pad(hist, 1)
    summed = sum(padded[a:a + bins, b:b + bins] for a in range(3) for b in range(3))
    r, c = np.unravel_index(int(np.argmax(summed)), summed.shape)
    centre = np.array([(r_edges[r] + r_edges[r + 1]) / 2, (c_edges[c] + c_edges[c + 1]) / 2])
    for radius in (2.2 * tol, tol):  # the 3 x 3 block, then the disc around its mean
        near = np.hypot(*(v - centre).T) <= radius
        if near.any():
            centre = v[near].mean(axis=0)
    return centre


def find_double_tip(points: np.ndarray, mass: np.ndarray, *, nm_per_px: float = 0.1,
                    min_nm: float = 0.5, max_nm: float = 2.5, tolerance_nm: float = 0.15,
                    min_pairs: int = 3, min_share: float = 0.1) -> DoubleTip | None:
    """The double tip of one scan, or ``None``.

    ``points`` ``(n, 2)`` are the detections' ``(row, col)`` in model pixels of ``nm_per_px``;
    ``mass`` ``(n,)`` their strength (larger = the copy to keep). A double tip is declared when at
    least ``min_pairs`` and at least ``min_share`` × n pairs of detections, ``min_nm`` to
    ``max_nm`` apart, share one displacement within ``tolerance_nm``. Each detection is in at most
    one pair (closest to the shared displacement first).
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    mass = np.asarray(mass, dtype=float).reshape(-1)
    n = len(points)
    if n < 2 * min_pairs:
        return None
    i, j = np.triu_indices(n, k=1)
    v = points[j] - points[i]
    length = np.hypot(v[:, 0], v[:, 1]) * nm_per_px
    near = (length >= min_nm) & (length <= max_nm)
    i, j, v = i[near], j[near], _canonical(v[near])
    if len(v) < min_pairs:
        return None
    tol = tolerance_nm / nm_per_px
    offset = _densest(v, tol, max_nm / nm_per_px)
    # The pairs at that offset, oriented so that second = first + offset; each detection used once.
    forward = np.hypot(*(points[j] - points[i] - offset).T)
    backward = np.hypot(*(points[i] - points[j] - offset).T)
    first, second = np.where(forward <= backward, i, j), np.where(forward <= backward, j, i)
    misfit = np.minimum(forward, backward)
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for k in np.argsort(misfit, kind="stable"):
        if misfit[k] > tol:
            break
        a, b = int(first[k]), int(second[k])
        if a not in used and b not in used:
            used.update((a, b))
            pairs.append((a, b))
    if len(pairs) < max(min_pairs, min_share * n):
        return None
    # The ghost side, by a vote of the pairs: the copy with the smaller mass.
    second_fainter = sum(1 if mass[b] < mass[a] else -1 if mass[b] > mass[a] else 0 for a, b in pairs)
    if second_fainter >= 0:
        ghosts = tuple(b for _, b in pairs)
        ghost_offset = offset
    else:
        ghosts = tuple(a for a, _ in pairs)
        ghost_offset = -offset
    return DoubleTip((float(ghost_offset[0]), float(ghost_offset[1])), len(pairs), tuple(sorted(ghosts)))
