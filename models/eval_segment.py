"""Detection F1 and position error of the segmenter on simulated scans (``stmwatch eval segment``).

A detection matches a true defect when their scanner-frame positions are within ``radius`` of
each other; matching is greedy, closest pairs first, each defect used at most once. Per surface:
precision, recall, F1 (over all scans pooled) and the median absolute error of ``x_m`` and of
``y_m`` over the matched pairs. True defects in lines the scan never acquired are not counted.

The held-out scans come from the simulator with seeds never used in training
(:data:`HELD_OUT_SEED`), all artefacts on, random direction, angle, offset and 256–512 pixels.
The command line is ``daemon/targets/eval_segment.py``; ``scripts/eval_segmentation.py`` runs the
same code.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from .preprocess import PreprocessSettings
from .settings import ModelSettings

log = logging.getLogger(__name__)

HELD_OUT_SEED = 7_000_000  # held-out scans use seeds HELD_OUT_SEED + i; training uses seeds < 1_000_000
BLOCK_STEP = 100_000  # held-out block b starts at seed + b * BLOCK_STEP (7 000 000+, 7 100 000+, ...)
MATCH_RADIUS_NM = 0.5


def match_points(pred: np.ndarray, truth: np.ndarray, radius: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of ``pred`` ``(n, 2)`` to ``truth`` ``(m, 2)`` (same units):
    pairs ``(i, j, distance)`` with distance ≤ ``radius``, closest first."""
    pred = np.asarray(pred, dtype=float).reshape(-1, 2)
    truth = np.asarray(truth, dtype=float).reshape(-1, 2)
    if len(pred) == 0 or len(truth) == 0:
        return []
    dist = np.hypot(pred[:, None, 0] - truth[None, :, 0], pred[:, None, 1] - truth[None, :, 1])
    i_idx, j_idx = np.nonzero(dist <= radius)
    order = np.argsort(dist[i_idx, j_idx], kind="stable")
    used_i, used_j, pairs = set(), set(), []
    for k in order:
        i, j = int(i_idx[k]), int(j_idx[k])
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            pairs.append((i, j, float(dist[i, j])))
    return pairs


@dataclasses.dataclass
class DetectionScore:
    """Counts (``tp``, ``fp``, ``fn``: sums over ``per_scan``, one ``(tp, fp, fn)`` per ``add``) and
    matched-pair errors accumulated over scans (errors in the units given)."""

    dx: list[float] = dataclasses.field(default_factory=list)
    dy: list[float] = dataclasses.field(default_factory=list)
    per_scan: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)

    def add(self, pred: np.ndarray, truth: np.ndarray, radius: float) -> None:
        pred = np.asarray(pred, dtype=float).reshape(-1, 2)
        truth = np.asarray(truth, dtype=float).reshape(-1, 2)
        pairs = match_points(pred, truth, radius)
        self.per_scan.append((len(pairs), len(pred) - len(pairs), len(truth) - len(pairs)))
        for i, j, _ in pairs:
            self.dx.append(abs(pred[i, 0] - truth[j, 0]))
            self.dy.append(abs(pred[i, 1] - truth[j, 1]))

    @property
    def tp(self) -> int:
        return sum(counts[0] for counts in self.per_scan)

    @property
    def fp(self) -> int:
        return sum(counts[1] for counts in self.per_scan)

    @property
    def fn(self) -> int:
        return sum(counts[2] for counts in self.per_scan)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def f1_interval(self, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """95 % interval of the pooled F1 by resampling the scans (each ``add``) with replacement:
        how much the figure would move with another set of as many scans."""
        def f1(tp, fp, fn):
            return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)

        return scan_resampled_interval(np.array(self.per_scan, dtype=float).reshape(-1, 3), f1, resamples, seed)

    @property
    def median_dx(self) -> float:
        return float(np.median(self.dx)) if self.dx else float("nan")

    @property
    def median_dy(self) -> float:
        return float(np.median(self.dy)) if self.dy else float("nan")


def scan_resampled_interval(per_scan: np.ndarray, statistic, resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """95 % interval of a pooled figure when the scans are resampled with replacement.

    ``per_scan`` ``(scans, k)`` holds counts per scan. ``statistic(*columns)`` turns the summed
    columns ``(resamples,)`` each into the figure, e.g. F1 from tp, fp, fn."""
    counts = np.asarray(per_scan, dtype=float)
    if len(counts) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    sums = counts[rng.integers(0, len(counts), (resamples, len(counts)))].sum(axis=1)
    values = statistic(*sums.T)
    return float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))  # NaN: no defect drawn


def truth_points_m(scan, truth) -> np.ndarray:
    """``(m, 2)`` scanner-frame metres of the true defects that lie in acquired lines."""
    frame = scan.topography().frames()[0]
    acquired = ~np.isnan(frame).all(axis=1)
    points = []
    for d in truth.defects:
        r = int(np.clip(round(d.row), 0, len(acquired) - 1))
        if acquired[r]:
            points.append((d.x_m, d.y_m))
    return np.array(points, dtype=float).reshape(-1, 2)


def held_out_scan(surface: str, index: int, seed: int = HELD_OUT_SEED, pixels: tuple[int, int] = (256, 512),
                  artefacts: str = "all"):
    """One held-out simulated scan → ``(Scan, Truth)``: ``artefacts`` (``Artefacts.parse``: "all",
    "none", "drift,scars=2" ...), random direction, angle, offset and size (``pixels`` range), from
    seed ``seed + index`` (also seeding the choices)."""
    from .sim.simulate import Artefacts, draw_geometry, simulate_scan

    rng = np.random.default_rng([seed + index, 13])
    geometry = draw_geometry(rng, pixels)  # size, 0.06-0.2 nm/px, angle, offset, direction
    return simulate_scan(surface, seed + index, artefacts=Artefacts.parse(artefacts), **geometry)


def evaluate_segmenter(segmenter, scans, radius_m: float = MATCH_RADIUS_NM * 1e-9) -> DetectionScore:
    """Score ``segmenter.segment`` over ``scans`` (an iterable of ``(Scan, Truth)``), in metres."""
    score = DetectionScore()
    for scan, truth in scans:
        defects = segmenter.segment(scan)
        pred = np.array([(d.x_m, d.y_m) for d in defects], dtype=float).reshape(-1, 2)
        score.add(pred, truth_points_m(scan, truth), radius_m)
    return score


def score_record(score: DetectionScore, scans: int, t0: float) -> dict:
    """The figures of one surface (errors in metres → nm), as the table and ``--json`` show them;
    ``t0`` the ``time.perf_counter()`` at the start."""
    return {"scans": scans, "true": score.tp + score.fn, "found": score.tp + score.fp, "tp": score.tp,
            "precision": round(score.precision, 4), "recall": round(score.recall, 4), "f1": round(score.f1, 4),
            "f1_ci95": [round(v, 4) for v in score.f1_interval()],
            "median_dx_nm": round(score.median_dx * 1e9, 4), "median_dy_nm": round(score.median_dy * 1e9, 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def evaluate_surfaces(surfaces: list[str], n_scans: int, *, models: ModelSettings | None = None,
                      preprocess: PreprocessSettings | None = None, backend: str | None = None,
                      weights: str | None = None, seed: int = HELD_OUT_SEED, pixels=(256, 512),
                      radius_nm: float = MATCH_RADIUS_NM, artefacts: str = "all", blocks: int = 1) -> dict[str, dict]:
    """F1 and median position errors (nm) per surface on ``n_scans`` held-out scans each, from each
    of ``blocks`` blocks of seeds (``seed``, ``seed + BLOCK_STEP``, ...), pooled; with more than one
    block, ``f1_per_block`` gives each block's own F1. ``models``/``preprocess`` default to the
    shipped settings."""
    from .load import load_segmenter
    from .surfaces import get_surface

    models = models or ModelSettings()
    preprocess = preprocess or PreprocessSettings()
    if weights:
        models = dataclasses.replace(models, segmenter_weights=weights)
    results = {}
    for key in surfaces:
        segmenter = load_segmenter(models, get_surface(key), preprocess, backend)
        t0 = time.perf_counter()
        starts = [seed + b * BLOCK_STEP for b in range(blocks)]
        scans = (held_out_scan(key, i, start, pixels, artefacts) for start in starts for i in range(n_scans))
        score = evaluate_segmenter(segmenter, scans, radius_nm * 1e-9)
        results[key] = {**score_record(score, n_scans * blocks, t0), "weights": segmenter.version}
        if blocks > 1:
            results[key]["first_seeds"] = starts
            per_block = [DetectionScore(per_scan=score.per_scan[b * n_scans:(b + 1) * n_scans]) for b in range(blocks)]
            results[key]["f1_per_block"] = [round(block.f1, 4) for block in per_block]
        log.info("%s: %s", key, results[key])
    return results
