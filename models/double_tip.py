"""Double-tip ghosts: find the second apex's offset in one scan and put its copies right.

A tip with two apexes images every feature twice: once under the apex nearer the surface and
again, a little fainter, under the second apex, at a fixed displacement for the whole scan
(typically 0.5-2 nm). A segmenter that looks at a few nm at a time may mark both copies (a
defect counted twice) or, when the copies look alike, only the fainter one (the defect reported
up to 2 nm from where it is). The displacement is the same for every feature of the scan, which a
local network does not see but the whole scan does. Two ways to find it, tried in this order by
:func:`resolve_double_tip`:

1. **From the image** (:func:`find_copy_offset`): in :func:`feature_band` (the scan at the scale
   of defects, with the lattice's periodic part taken out) every detected protrusion has a copy
   at the same displacement; the displacement at which the median detection sees the most of
   itself again is the ghost offset (when that displacement repeats both ways, as a feature's
   own tail or satellites do, the strongest one-sided displacement). Its side is where most
   detections have their copy (the network mostly marks the real copy) or, when the network
   marked both copies alike, the side of the fainter copies. When neither tells the side (the
   network marked both copies alike and their brightness does not say which is fainter: two
   apexes at about one height), the side of the larger median is a guess, right more often than
   not on validation scans but a near tie that the smallest change in the detections can turn
   over (int8 rounding did, in 2 of 90 held-out scans). Then the detections' pairs (2.) are asked
   too: when their mass vote puts the ghosts on the other side, no side is taken: nothing is
   moved, the fainter copy of each pair is dropped (each defect counted once, where the network
   put it) and the operator is told that the side is unknown. For each detection,
   :func:`copy_contrast` then compares the feature at ``p - offset`` and at
   ``p + offset`` with the one at ``p``: a detection that is itself the ghost has a brighter copy
   of itself behind it and none ahead. It is dropped when its real copy was detected too, and
   moved onto the real copy when the network marked the ghost alone.
2. **From the detections** (:func:`find_double_tip`), when the image shows no clear offset: many
   pairs of detections share one displacement vector, while the displacements between independent
   defects are spread out (over the lattice vectors, since defects sit on lattice sites). A
   double tip is declared only when the densest displacement holds enough pairs *and* clearly
   more than the next densest one. The ghost side is decided once per scan, by a vote over the
   pairs: the side whose copies have the smaller *mass* (sum of defect probability over the
   component) in most pairs.

Positions are model pixels of the display frame, ``(row, col)``, row 0 at the top. With two
apexes at the same height the two copies are the same image and no method can say which is
"real": then half of the kept positions may be off by the offset, but each defect is still
counted once. On simulated scans with a double tip (validation seeds, 40 per surface) the image
method took detection F1 from 0.92 to 0.93-0.94 (ghost copies dropped or moved onto the real
copy); depressions (vacancies) that the second apex fills in are not seen by either method.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np

from .lattice import rfft_frequency

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DoubleTip:
    """A double tip found in one scan. ``offset_px`` ``(rows, cols)`` model pixels (display frame)
    goes from each real copy to its ghost. ``ghosts`` are the indices (into the detection list
    given) of the detections to drop: ghosts whose real copy was detected too. ``moved`` holds
    ``(index, row, col)`` for ghosts detected without their real copy: they belong at
    ``(row, col)``. ``method`` says how the offset was found: ``"image"`` (:func:`find_copy_offset`;
    ``pairs`` is then the number of ghosts dropped or moved) or ``"pairs"`` (:func:`find_double_tip`:
    ``pairs`` detections were paired at the offset; on a tied vote the fainter copy of each pair is
    dropped, ``offset_px`` is one of the two directions and ``side_known`` is False; ``vote`` is the
    share of the pairs whose fainter copy lies on the side taken)."""

    offset_px: tuple[float, float]
    pairs: int
    ghosts: tuple[int, ...]
    moved: tuple[tuple[int, float, float], ...] = ()
    method: str = "pairs"
    side_known: bool = True
    vote: float = 1.0
    fainter: tuple[int, ...] = ()  # "pairs": the fainter copy of each pair (the ghosts when no side is taken)

    def without_side(self) -> DoubleTip:
        """The same pairs with no side taken: the fainter copy of each pair is the ghost."""
        return dataclasses.replace(self, ghosts=self.fainter, side_known=False)

    def describe(self, nm_per_px: float) -> str:
        """One sentence for the operator: where the second apex images each feature (nm, display
        frame: right and down), what was put right, and that dark defects may be undercounted: the
        height recorded is the higher apex's, so a pit under one apex is filled in by the other
        (simulated Ge(001), shipped UNet: 59 % of the dark defects found when the two apexes are
        within 0.013 nm of one height, 97 % when 0.027 nm or more apart; docs/autolabel.md, stop 28)."""
        down, right = (v * nm_per_px for v in self.offset_px)
        fixed = (f"{len(self.ghosts)} ghost defect(s) dropped, {len(self.moved)} moved onto their real copy"
                 if self.ghosts or self.moved else "no detection needed putting right")
        either = "" if self.side_known else ", or the opposite way"
        return (f"double tip: a second apex images every feature again {np.hypot(down, right):.2f} nm away "
                f"({right:+.2f} nm right, {down:+.2f} nm down{either}); {fixed}; "
                "dark defects (pits) may be undercounted: the other apex fills them in")


# ---- from the detections: pairs at one displacement ---------------------------------------------


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
    (closest to the shared displacement first). :meth:`DoubleTip.without_side` gives the same pairs
    with no side taken: the fainter copy of each pair dropped, as on a tied vote.
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
    fainter = [int(np.sign(mass[a] - mass[b])) for a, b in pairs]  # +1: the second copy is fainter
    second_fainter = sum(fainter)
    vote = max(fainter.count(1), fainter.count(-1)) / len(pairs)
    each = tuple(sorted(b if mass[b] <= mass[a] else a for a, b in pairs))
    if second_fainter > 0:
        ghosts, ghost_offset = tuple(b for _, b in pairs), offset
    elif second_fainter < 0:
        ghosts, ghost_offset = tuple(a for a, _ in pairs), -offset
    else:
        ghosts, ghost_offset = each, offset
    return DoubleTip((float(ghost_offset[0]), float(ghost_offset[1])), len(pairs), tuple(sorted(ghosts)),
                     side_known=second_fainter != 0, vote=vote, fainter=each)


# ---- from the image: every feature seen again ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CopyOffset:
    """The ghost offset seen in the image: ``offset_px`` ``(rows, cols)`` from a real feature to
    its copy; ``copy_ratio`` the median strength of the copy over the feature's, ``reverse_ratio``
    the same at ``-offset_px`` (near 0 for a double tip whose ghosts the network mostly left out;
    near ``copy_ratio`` for a lattice vector, which repeats both ways); ``significance`` how far
    ``copy_ratio`` stands above the other displacements', in median absolute deviations;
    ``agreement`` the share of the detections with a visible copy that say the same about the side
    of the ghost from the copies' brightness (0.5: no side can be told, as with two apexes at one
    height); ``used`` the number of detections (protrusions) measured; ``one_side`` the share of
    the detections with a visible copy that have it on the side of the offset, or on the other side,
    whichever is larger (near 1 when the network marked mostly one copy of each feature);
    ``side_from`` what told the side: ``"marks"`` (the network marked mostly one copy),
    ``"brightness"`` (the brightness vote) or ``"none"`` (neither: the side of the larger median)."""

    offset_px: tuple[float, float]
    copy_ratio: float
    reverse_ratio: float
    significance: float
    agreement: float
    used: int
    one_side: float = 1.0
    side_from: str = "marks"


def _radial_median(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """The median of ``values`` in each integer bin of ``bins`` (same shape), as an array indexed by
    bin (the lower middle value for an even count; 0 for an empty bin)."""
    values, bins = values.ravel(), bins.ravel()
    order = np.lexsort((values, bins))
    starts = np.searchsorted(bins[order], np.arange(bins.max() + 2))
    counts = np.diff(starts)
    middle = starts[:-1] + np.maximum(counts - 1, 0) // 2
    return np.where(counts > 0, values[order][np.minimum(middle, len(values) - 1)], 0.0)


def feature_band(image: np.ndarray, valid: np.ndarray, nm_per_px: float = 0.1, *, small_nm: float = 0.12,
                 large_nm: float = 0.8, peak_factor: float = 5.0, lattice_min_per_nm: float = 0.6) -> np.ndarray:
    """``image`` ``(H, W)`` at the scale of defects: a difference of Gaussians (sigmas ``small_nm``
    and ``large_nm``) with the lattice's periodic part taken out. The lattice is the spectrum's
    sharp peaks: Fourier components above ``lattice_min_per_nm`` cycles/nm that are more than
    ``peak_factor`` times the median magnitude at their spatial frequency are brought down to that
    median. Same units as ``image``; 0 where ``valid`` is False (those pixels are filled with the
    median first)."""
    fill = float(np.median(image[valid])) if valid.any() else 0.0
    x = np.where(valid, image, fill).astype(np.float64)
    x -= x.mean()
    h, w = x.shape
    spectrum = np.fft.rfft2(x)
    k = rfft_frequency((h, w), nm_per_px)
    magnitude = np.abs(spectrum)
    ring = (k / (2.0 / (min(h, w) * nm_per_px))).astype(np.int64)  # rings two frequency steps wide
    background = _radial_median(magnitude, ring)[ring]
    lattice = (magnitude > peak_factor * background) & (k > lattice_min_per_nm)
    spectrum = np.where(lattice, spectrum * (background / np.maximum(magnitude, 1e-300)), spectrum)
    two_pi2_k2 = 2 * np.pi ** 2 * k ** 2
    band = np.exp(-two_pi2_k2 * small_nm ** 2) - np.exp(-two_pi2_k2 * large_nm ** 2)
    return np.where(valid, np.fft.irfft2(spectrum * band, s=(h, w)), 0.0)


def _sample(band: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``band`` at ``points`` ``(..., 2)`` (fractional pixels), interpolated bilinearly; NaN outside."""
    h, w = band.shape
    r, c = points[..., 0], points[..., 1]
    inside = (r >= 0) & (r <= h - 1) & (c >= 0) & (c <= w - 1)
    r0 = np.clip(np.floor(np.nan_to_num(r)), 0, max(h - 2, 0)).astype(np.int64)
    c0 = np.clip(np.floor(np.nan_to_num(c)), 0, max(w - 2, 0)).astype(np.int64)
    fr, fc = np.clip(r - r0, 0, 1), np.clip(c - c0, 0, 1)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    values = ((1 - fr) * ((1 - fc) * band[r0, c0] + fc * band[r0, c1])
              + fr * ((1 - fc) * band[r1, c0] + fc * band[r1, c1]))
    return np.where(inside, values, np.nan)


def find_copy_offset(band: np.ndarray, points: np.ndarray, *, nm_per_px: float = 0.1, min_nm: float = 0.5,
                     max_nm: float = 2.5, max_points: int = 400, one_sided: float = 0.6,
                     min_agreement: float = 0.8, max_reverse: float = 0.5) -> CopyOffset | None:
    """The displacement, ``min_nm`` to ``max_nm`` long, at which the detections at ``points``
    ``(n, 2)`` see the most of themselves again in ``band`` (:func:`feature_band`), and its side.

    For each whole-pixel displacement ``v``: the median over the protrusions (``band > 0`` at the
    detection; the ``max_points`` strongest) of ``a = band(p + v) / band(p)``; the best ``v`` is
    refined to a fraction of a pixel by a parabola through the neighbours. When the best ``v``
    repeats both ways (its ``reverse_ratio`` is at least ``max_reverse`` times its ``copy_ratio``,
    as :func:`resolve_double_tip` tests: a feature's own tail or satellites, or a lattice vector),
    the best ``v`` above the annulus median whose median at ``-v`` is below ``max_reverse`` times
    its own is taken instead; when there is none, the two-sided one is returned. When the network marked
    mostly one copy of each feature, that is the real one (it was trained to tell them apart, with
    more context than a copy's brightness), and its copies, the ghosts, lie at the best ``v``.

    When it marked both copies alike (fewer than ``one_sided`` of the detections with a visible
    copy have it on the same side), the median can favour either side, and the copies' brightness
    decides instead, by a vote: with ``b = band(p - v) / band(p)``, a detection whose copy is
    ahead (``a > b``) and fainter (``a < 1``), or behind and brighter (``b > 1``), says the ghost
    lies at ``+v`` (copies within 10 % of their feature's strength do not vote). The vote is used
    when at least ``min_agreement`` of it agrees (with two apexes at about one height no side can
    be told). A network that marked mostly the ghosts is not corrected. ``None`` when fewer than 3
    protrusions were detected or no displacement could be measured.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    strength = _sample(band, points)
    protrusion = np.nan_to_num(strength) > 0
    if protrusion.sum() < 3:
        return None
    strongest = np.argsort(-np.where(protrusion, strength, -np.inf))[:min(max_points, int(protrusion.sum()))]
    points, strength = points[strongest], strength[strongest]
    reach = int(np.ceil(max_nm / nm_per_px))
    grid = np.stack(np.mgrid[-reach:reach + 1, -reach:reach + 1], axis=-1).astype(float)
    length = np.hypot(grid[..., 0], grid[..., 1]) * nm_per_px
    annulus = (length >= min_nm) & (length <= max_nm)
    copies = np.full((len(points),) + length.shape, np.nan)  # band(p + v) / band(p), v on the grid
    copies[:, annulus] = _sample(band, points[:, None, :] + grid[annulus][None]) / strength[:, None]
    ratio = np.full(length.shape, np.nan)
    with warnings.catch_warnings():  # displacements that leave the image for every detection: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        ratio[annulus] = np.nanmedian(copies[:, annulus], axis=0)
    if not np.isfinite(ratio).any():
        return None
    centre = np.nanmedian(ratio[annulus])
    spread = np.nanmedian(np.abs(ratio[annulus] - centre)) + 1e-12
    found = _offset_at(np.unravel_index(np.nanargmax(ratio), ratio.shape), ratio, copies, reach, one_sided,
                       min_agreement, (centre, spread), len(points))
    if found.reverse_ratio < max_reverse * found.copy_ratio:
        return found
    # The strongest displacement repeats both ways (a feature's own tail, or a lattice vector that
    # the band kept): the double tip's offset, if any, is the strongest one-sided displacement.
    reverse = ratio[::-1, ::-1]
    candidates = np.where(annulus & (ratio > centre) & (reverse < max_reverse * ratio), ratio, np.nan)
    if not np.isfinite(candidates).any():
        return found
    return _offset_at(np.unravel_index(np.nanargmax(candidates), ratio.shape), ratio, copies, reach, one_sided,
                      min_agreement, (centre, spread), len(points))


def _offset_at(peak: tuple[int, int], ratio: np.ndarray, copies: np.ndarray, reach: int, one_sided: float,
               min_agreement: float, background: tuple[float, float], used: int) -> CopyOffset:
    """The :class:`CopyOffset` of :func:`find_copy_offset` at grid index ``peak`` of ``ratio``
    (the median copy ratio per displacement; ``copies`` the per-detection ratios), refined to a
    fraction of a pixel, its side told as described there; ``background`` the median and median
    deviation of ``ratio`` over the annulus (for the significance)."""
    r, c = peak
    fine = [float(r), float(c)]
    for axis, (lo, hi) in enumerate((((r - 1, c), (r + 1, c)), ((r, c - 1), (r, c + 1)))):
        if min(lo) >= 0 and max(hi) < ratio.shape[0] and np.isfinite([ratio[lo], ratio[hi]]).all():
            curve = ratio[lo] - 2 * ratio[r, c] + ratio[hi]
            if curve < 0:
                fine[axis] += float(np.clip(0.5 * (ratio[lo] - ratio[hi]) / curve, -0.5, 0.5))
    reverse = ratio[2 * reach - r, 2 * reach - c]
    a, b = copies[:, r, c], copies[:, 2 * reach - r, 2 * reach - c]  # at +v and at -v
    copy = np.fmax(a, b)
    visible = np.isfinite(copy) & (np.abs(a - b) > 0.25)  # a visible copy on one side
    ahead = float((a > b)[visible].mean()) if visible.any() else 1.0  # share with their copy at +v
    told = visible & (np.abs(np.log(np.abs(copy) + 1e-12)) > np.log(1.1))  # copies 10 % fainter or brighter
    votes, plus = int(told.sum()), int(np.where(a > b, copy < 1, copy > 1)[told].sum())
    agreement = max(plus, votes - plus) / votes if votes else 0.5
    sign, copy_ratio = 1.0, float(ratio[r, c])
    one_side = max(ahead, 1 - ahead)
    side_from = "marks" if one_side >= one_sided else "brightness" if agreement >= min_agreement else "none"
    if side_from == "brightness":
        # Both copies marked alike: the fainter is the ghost. Each detection's copy lies on its own
        # side, so the ratios are taken per detection: the copy over the brighter of the pair, and
        # what lies on the other side.
        sign = 1.0 if 2 * plus >= votes else -1.0
        brighter = np.fmax(copy[told], 1.0)
        copy_ratio = float(np.median(np.fmin(copy[told], 1.0) / brighter))
        reverse = float(np.median(np.fmin(a, b)[told] / brighter))
    offset = (sign * (fine[0] - reach), sign * (fine[1] - reach))
    centre, spread = background
    return CopyOffset(offset, copy_ratio, float(reverse), float((ratio[r, c] - centre) / spread), agreement, used,
                      one_side, side_from)


def copy_contrast(band: np.ndarray, points: np.ndarray, offset_px, *, nm_per_px: float = 0.1,
                  radius_nm: float = 0.6, sigma_nm: float = 0.3) -> np.ndarray:
    """``(n,)``: how much more the patch of ``band`` at ``p - offset`` is a copy of the patch at
    ``p`` than the patch at ``p + offset`` is (regression coefficients onto the patch at ``p``,
    Gaussian-weighted, ``radius_nm`` around each point). About ``+1/ratio`` for a ghost (its
    brighter real copy lies behind it), ``-ratio`` for a real feature (its ghost lies ahead), near
    0 for a feature with no copy; NaN where a patch is mostly outside the image."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    offset = np.asarray(offset_px, dtype=float)
    reach = max(1, int(round(radius_nm / nm_per_px)))
    window = np.stack(np.mgrid[-reach:reach + 1, -reach:reach + 1], axis=-1).astype(float)
    weight = np.exp(-(window ** 2).sum(-1) * nm_per_px ** 2 / (2 * sigma_nm ** 2))

    def patches(centres: np.ndarray) -> np.ndarray:
        return _sample(band, np.round(centres)[:, None, None, :] + window[None])

    own = patches(points)
    norm = np.nansum(weight * own * own, axis=(1, 2)) + 1e-12

    def copy_of_own(centres: np.ndarray) -> np.ndarray:
        other = patches(centres)
        coefficient = np.nansum(weight * own * other, axis=(1, 2)) / norm
        return np.where(np.isnan(other).mean(axis=(1, 2)) > 0.3, np.nan, coefficient)

    return copy_of_own(points - offset) - copy_of_own(points + offset)


def ghosts_at(band: np.ndarray, points: np.ndarray, offset_px, *, nm_per_px: float = 0.1,
              ghost_contrast: float = 0.8, same_nm: float = 0.35
              ) -> tuple[tuple[int, ...], tuple[tuple[int, float, float], ...]]:
    """The detections at ``points`` ``(n, 2)`` that are ghosts of a double tip whose copies lie at
    ``offset_px`` from their real feature, as :func:`resolve_double_tip` tells them (``band``: the
    :func:`feature_band`): ``(dropped, moved)``, the indices of the ghosts whose real copy was
    detected too, and ``(index, row, col)`` of those detected alone with their real place."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    offset = np.asarray(offset_px, dtype=float)
    contrast = copy_contrast(band, points, offset, nm_per_px=nm_per_px)
    real_places, n = points - offset, len(points)
    near_real = np.zeros(n, dtype=bool)  # another detection lies at this one's real place
    i, j = close_pairs(np.concatenate([points, real_places]), same_nm / nm_per_px)  # i < j
    near_real[j[(i < n) & (j >= n) & (i != j - n)] - n] = True
    protrusion = np.nan_to_num(_sample(band, points)) > 0  # depressions leave no visible copy
    ghost = protrusion & (np.nan_to_num(contrast, nan=-np.inf) > np.where(near_real, 0.0, ghost_contrast))
    dropped = tuple(int(k) for k in np.flatnonzero(ghost & near_real))
    moved = tuple((int(k), float(real_places[k, 0]), float(real_places[k, 1]))
                  for k in np.flatnonzero(ghost & ~near_real))
    return dropped, moved


def resolve_double_tip(points: np.ndarray, mass: np.ndarray, image: np.ndarray, valid: np.ndarray, *,
                       nm_per_px: float = 0.1, min_significance: float = 12.0, min_used: int = 6,
                       max_reverse: float = 0.5, ghost_contrast: float = 0.8, same_nm: float = 0.35,
                       report_ratio: float = 0.45, **pair_options) -> DoubleTip | None:
    """The double tip of one scan and what to do with each detection, or ``None``.

    ``points`` ``(n, 2)`` are the detections (model pixels of ``nm_per_px``), ``mass`` ``(n,)``
    their strength, ``image`` ``(H, W)`` the scan on the model grid (the forward topography) and
    ``valid`` where it has data. The offset is taken from the image when :func:`find_copy_offset`
    finds one at least ``min_significance`` deviations clear, from at least ``min_used``
    protrusions, seen on one side only (``reverse_ratio`` below ``max_reverse`` × ``copy_ratio``:
    not a lattice vector, nor the feature's own tail). A protrusion is then a ghost when
    :func:`copy_contrast` exceeds ``ghost_contrast`` (0 when another detection lies within
    ``same_nm`` of its real copy's place, ``p - offset``): dropped when its real copy was
    detected, moved onto it when not. Otherwise :func:`find_double_tip` (``pair_options``)
    decides from the detections alone. When the image gives no side (``CopyOffset.side_from`` is
    ``"none"``) and the pairs' vote puts the ghosts on the other side, nothing is moved and the
    fainter copy of each pair is dropped (``side_known`` False). (Validation blocks 8 500 000+ to
    8 800 000+, 80 scans per surface: this changed 2 scans, Ge(001) block 8 600 000+ F1
    0.685 → 0.733 and Si(001):H block 8 700 000+ 0.862 → 0.855, the same under fp32 and int8.)

    When the image shows the offset but no detection needs putting right (the network marked
    only the real copies) and the detections show no pairs, the double tip is still returned, with
    nothing to drop or move, if its copies are at least ``report_ratio`` as strong as their
    features: so that the operator hears of the tip. (Weaker one-sided repeats were mostly a
    feature's tail. With this, on validation scans with every artefact on, seeds 8 500 000+ and
    8 600 000+, a double tip was reported in 162 of 240 scans with one and in 2 of 140 without,
    where a tip change may have made one.)
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(points) == 0:
        return None
    band = feature_band(image, valid, nm_per_px)
    found = find_copy_offset(band, points, nm_per_px=nm_per_px, max_reverse=max_reverse)
    if (found is None or found.significance < min_significance or found.used < min_used
            or not found.reverse_ratio < max_reverse * found.copy_ratio):
        return find_double_tip(points, mass, nm_per_px=nm_per_px, **pair_options)
    offset = np.array(found.offset_px)
    if found.side_from == "none":
        # The image shows the offset but not which copy is the ghost: the network marked both alike
        # and their brightness does not tell (two apexes at about one height). The side of the
        # larger median is then a weak guess, right more often than not, but one that the smallest
        # change in the detections can turn over. When the detections' pairs put the fainter copies
        # on the other side, the two disagree and no side is taken: nothing is moved, and the fainter
        # copy of each pair is dropped (each defect counted once, where the network put it).
        from_pairs = find_double_tip(points, mass, nm_per_px=nm_per_px, **pair_options)
        if from_pairs is not None and from_pairs.side_known and float(np.dot(from_pairs.offset_px, offset)) < 0:
            log.debug("double tip from the image: offset %s px with no side (%.0f %% of the copies on one side, "
                      "%.0f %% agreement), the pairs' vote (%.0f %%) says the other: the fainter copy of each pair "
                      "is dropped", np.round(offset, 2), 100 * found.one_side, 100 * found.agreement,
                      100 * from_pairs.vote)
            return from_pairs.without_side()
    dropped, moved = ghosts_at(band, points, offset, nm_per_px=nm_per_px, ghost_contrast=ghost_contrast,
                               same_nm=same_nm)
    log.debug("double tip from the image: offset %s px, copy ratio %.2f, %.0f deviations, side agreed by %.0f %% "
              "of %d protrusions", np.round(offset, 2), found.copy_ratio, found.significance, 100 * found.agreement,
              found.used)
    if not dropped and not moved:  # nothing to put right: let the detections speak
        from_pairs = find_double_tip(points, mass, nm_per_px=nm_per_px, **pair_options)
        if from_pairs is not None or found.copy_ratio < report_ratio:
            return from_pairs
    return DoubleTip((float(offset[0]), float(offset[1])), len(dropped) + len(moved), dropped, moved, "image")


# ---- for a network that marks both copies alike ----------------------------------------------------


def fainter_side(band: np.ndarray, points: np.ndarray, offset_px, *, nm_per_px: float = 0.1,
                 tolerance_nm: float = 0.15) -> tuple[int, float, int]:
    """Which way along ``±offset_px`` the fainter copies lie, from the pairs of detections at
    ``points`` ``(n, 2)`` that ``offset_px`` (model pixels) apart within ``tolerance_nm``.

    The second apex sits further from the surface than the first, so every copy it makes is the
    same feature a little fainter. For each pair ``b = a + offset`` the difference
    ``band(b) - band(a)`` is taken in ``band`` (:func:`feature_band`); its median over the pairs,
    in standard errors (from the median absolute deviation), is ``z``. Returns ``(side, z,
    pairs)``: ``side`` is +1 when the fainter copies lie at ``+offset_px`` (``z`` > 0), -1 when at
    ``-offset_px``, 0 when fewer than 2 pairs could be measured.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    offset = np.asarray(offset_px, dtype=float)
    tol = tolerance_nm / nm_per_px
    i, j = close_pairs(points, np.hypot(*offset) + 2 * tol)
    step = points[j] - points[i]
    forward, backward = np.hypot(*(step - offset).T) < tol, np.hypot(*(step + offset).T) < tol
    first = np.concatenate([i[forward], j[backward]])
    second = np.concatenate([j[forward], i[backward]])  # second = first + offset
    difference = _sample(band, points[second]) - _sample(band, points[first])
    difference = difference[np.isfinite(difference)]
    if len(difference) < 2:
        return 0, 0.0, len(difference)
    median = float(np.median(difference))
    spread = 1.4826 * float(np.median(np.abs(difference - median))) + 1e-12
    z = -median / (spread / np.sqrt(len(difference)))
    return (1 if z > 0 else -1 if z < 0 else 0), float(z), len(difference)


def resolve_marked_both(points: np.ndarray, image: np.ndarray, valid: np.ndarray, *, nm_per_px: float = 0.1,
                        min_z: float = 1.5, **pair_options) -> DoubleTip | None:
    """The double tip of one scan for a network that marks both copies of each feature alike
    (autolabel's planted-defect detector, which never saw a double tip), or ``None``.

    :func:`resolve_double_tip` takes the ghosts' side from which copy the network marked, and that
    is a coin flip here. Instead: the offset from the detections' pairs (:func:`find_double_tip`,
    ``pair_options``), the side from the copies' strength (:func:`fainter_side`), then each
    detection as :func:`ghosts_at` tells it (dropped when its real copy was detected too, moved onto
    it when not). When the side is not clear (``|z|`` below ``min_z``: two apexes at about one
    height), nothing is dropped or moved and ``side_known`` is False: each copy stays, so a real
    defect is not traded for its ghost on a guess. ``points`` ``(n, 2)`` model pixels of
    ``nm_per_px``; ``image`` ``(H, W)`` the scan on the model grid, ``valid`` where it has data.
    (Chosen on tuning scans with the planted-defect detector of ``stmwatch autolabel``:
    docs/autolabel.md, stop 22.)"""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    found = find_double_tip(points, np.ones(len(points)), nm_per_px=nm_per_px, **pair_options)
    if found is None:
        return None
    # The copies' strength in a band smoothed a little more (0.16 nm, not 0.12), so that a pair's
    # difference is not one pixel's noise.
    smoother = feature_band(image, valid, nm_per_px, small_nm=0.16)
    side, z, pairs = fainter_side(smoother, points, found.offset_px, nm_per_px=nm_per_px)
    if side == 0 or abs(z) < min_z:
        log.debug("double tip from the pairs: offset %s px, side not clear (z %.2f over %d pairs): nothing put right",
                  np.round(found.offset_px, 2), z, pairs)
        return DoubleTip(found.offset_px, found.pairs, (), (), "pairs", side_known=False)
    offset = side * np.asarray(found.offset_px)
    dropped, moved = ghosts_at(feature_band(image, valid, nm_per_px), points, offset, nm_per_px=nm_per_px)
    log.debug("double tip from the pairs: offset %s px, fainter side z %.2f over %d pairs; %d dropped, %d moved",
              np.round(offset, 2), z, pairs, len(dropped), len(moved))
    return DoubleTip((float(offset[0]), float(offset[1])), found.pairs, dropped, moved, "pairs")
