"""Double-tip ghosts: find the second apex's offset in one scan and drop the copies it made.

A tip with two apexes images every feature twice: once under the apex nearer the surface and
again, a little fainter, under the second apex, at a fixed displacement for the whole scan
(typically 0.5-2 nm). A segmenter that looks at a few nm at a time marks both copies, so every
defect is counted twice. The displacement is the same for every defect of the scan, which a
local network does not see but the list of detections does: many pairs of detections share one
displacement vector, while the displacements between independent defects are spread out (over
the lattice vectors, since defects sit on lattice sites).

:func:`find_double_tip` looks for that shared vector among the pairwise displacements of the
detections (model pixels, display frame: ``(row, col)``, row 0 at the top). It is declared only
when the densest displacement holds enough pairs *and* clearly more than the next densest one
(independent defects on a lattice pile up on several lattice vectors alike). One detection of
each pair is then a ghost. Which side is the ghost is decided once per scan, by a vote over the
pairs: the side whose copies have the smaller *mass* (sum of defect probability over the
component) in most pairs; a single pair's fainter copy is right ~80 % of the time on simulated
scans when the second apex is ≥ 0.013 nm further from the surface. With two apexes at the same
height the two copies are the same image and no method can say which is "real": then half of the
kept positions are off by the offset, but each defect is still counted once.
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
    ``ghosts`` indices (into the detection list given) are the copies on the fainter side (on a
    tied vote, the fainter copy of each pair; ``offset_px`` is then one of the two directions)."""

    offset_px: tuple[float, float]
    pairs: int
    ghosts: tuple[int, ...]


def close_pairs(points: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)``, ``i < j``, of the pairs of ``points`` ``(n, 2)`` less than ``reach``
    apart (same units), found cell by cell on a grid of ``reach``-sized cells: memory and time
    grow with the number of close pairs, not with n²."""
    cells = np.floor(points / reach).astype(np.int64)
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    keys, starts = np.unique(cells[order], axis=0, return_index=True)
    members = {tuple(k): order[s:e] for k, s, e in zip(keys, starts, list(starts[1:]) + [len(order)])}
    firsts, seconds = [], []
    for (r, c), here in members.items():
        for dr, dc in ((0, 0), (0, 1), (1, -1), (1, 0), (1, 1)):  # each neighbouring cell pair once
            there = here if (dr, dc) == (0, 0) else members.get((r + dr, c + dc))
            if there is None:
                continue
            a, b = np.meshgrid(here, there, indexing="ij")
            a, b = a.ravel(), b.ravel()
            keep = a < b if (dr, dc) == (0, 0) else np.ones(len(a), bool)
            firsts.append(np.minimum(a, b)[keep])
            seconds.append(np.maximum(a, b)[keep])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(firsts), np.concatenate(seconds)
    near = np.hypot(*(points[j] - points[i]).T) < reach
    return i[near], j[near]


def _block_counts(v: np.ndarray, tol: float, reach: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of the vectors ``v`` ``(m, 2)`` in 3 × 3 blocks of ``tol``-sized bins over
    ``[-reach, reach]²``, and the bin edges (rows, columns)."""
    bins = max(1, int(np.ceil(2 * reach / tol)))
    hist, r_edges, c_edges = np.histogram2d(v[:, 0], v[:, 1], bins=bins, range=[[-reach, reach], [-reach, reach]])
    padded = np.pad(hist, 1)
    return sum(padded[a:a + bins, b:b + bins] for a in range(3) for b in range(3)), r_edges, c_edges


def _densest(v: np.ndarray, tol: float, reach: float) -> tuple[np.ndarray, float, float]:
    """The densest displacement among ``v`` ``(m, 2)`` and ``-v`` (both, so that a displacement
    near a half-plane border is not split): ``(centre, count, runner_up)``; ``centre`` is the mean
    of the vectors within ``tol`` of the densest 3 × 3 block of ``tol``-sized bins, ``count`` that
    block's count and ``runner_up`` the densest block elsewhere (away from ``±centre``)."""
    both = np.concatenate([v, -v])
    counts, r_edges, c_edges = _block_counts(both, tol, reach)
    r, c = np.unravel_index(int(np.argmax(counts)), counts.shape)
    centre = np.array([(r_edges[r] + r_edges[r + 1]) / 2, (c_edges[c] + c_edges[c + 1]) / 2])
    for radius in (2.2 * tol, tol):  # the 3 x 3 block, then the disc around its mean
        near = np.hypot(*(both - centre).T) <= radius
        if near.any():
            centre = both[near].mean(axis=0)
    rr = (r_edges[:-1] + r_edges[1:]) / 2
    cc = (c_edges[:-1] + c_edges[1:]) / 2
    grid = np.stack(np.meshgrid(rr, cc, indexing="ij"), axis=-1)
    away = (np.hypot(*(grid - centre).transpose(2, 0, 1)) > 3 * tol) & (np.hypot(*(grid + centre).transpose(2, 0, 1)) > 3 * tol)
    runner_up = float(counts[away].max()) if away.any() else 0.0
    return centre, float(counts[r, c]), runner_up


def find_double_tip(points: np.ndarray, mass: np.ndarray, *, nm_per_px: float = 0.1,
                    min_nm: float = 0.5, max_nm: float = 2.5, tolerance_nm: float = 0.15,
                    min_pairs: int = 3, min_share: float = 0.1, dominance: float = 2.0) -> DoubleTip | None:
    """The double tip of one scan, or ``None``.

    ``points`` ``(n, 2)`` are the detections' ``(row, col)`` in model pixels of ``nm_per_px``;
    ``mass`` ``(n,)`` their strength (larger = the copy to keep). A double tip is declared when at
    least ``min_pairs`` and at least ``min_share`` × n pairs of detections, ``min_nm`` to
    ``max_nm`` apart, share one displacement within ``tolerance_nm``, and that displacement holds
    at least ``dominance`` times as many pairs as any other. Each detection is in at most one pair
    (closest to the shared displacement first).
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    mass = np.asarray(mass, dtype=float).reshape(-1)
    n = len(points)
    if n < 2 * min_pairs:
        return None
    reach = max_nm / nm_per_px
    i, j = close_pairs(points, reach)
    v = points[j] - points[i]
    length = np.hypot(v[:, 0], v[:, 1]) * nm_per_px
    near = length >= min_nm
    i, j, v = i[near], j[near], v[near]
    if len(v) < min_pairs:
        return None
    tol = tolerance_nm / nm_per_px
    offset, count, runner_up = _densest(v, tol, reach)
    if count < dominance * runner_up:
        return None
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
    # The ghost side, by a vote of the pairs: the copy with the smaller mass; on a tied vote, the
    # fainter copy of each pair.
    second_fainter = sum(1 if mass[b] < mass[a] else -1 if mass[b] > mass[a] else 0 for a, b in pairs)
    if second_fainter > 0:
        ghosts, ghost_offset = tuple(b for _, b in pairs), offset
    elif second_fainter < 0:
        ghosts, ghost_offset = tuple(a for a, _ in pairs), -offset
    else:
        ghosts, ghost_offset = tuple(b if mass[b] <= mass[a] else a for a, b in pairs), offset
    return DoubleTip((float(ghost_offset[0]), float(ghost_offset[1])), len(pairs), tuple(sorted(ghosts)))
