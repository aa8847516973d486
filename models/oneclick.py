"""The operator's one-click flow, scored on a labelled folder (``stmwatch eval oneclick``).

The operator clicks K examples of each defect class (``stmwatch support add``) in the first scans
of a session, and the models label every defect of the later scans. Here the clicks come from the
truth: the first scans (in name order) give, for each class, the first K *clear* examples (at
least :data:`EDGE_NM` from the frame's edge and :data:`CLEAR_NM` from any other defect), cut with
:func:`~stmwatch.models.clicks.add_examples` -- ``support add``'s own code. The scans after the
last one needed for the support set are labelled by the analyser built on that support set and
scored: detection F1 at ``radius_nm`` with :class:`~stmwatch.models.eval_segment.DetectionScore`,
and the label accuracy of the matched defects (the pairs of
:func:`~stmwatch.models.eval_segment.match_points`). Truth files are those of ``stmwatch simulate``
(``NAME.truth.json`` beside ``NAME.sxm``).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stmwatch.drivers.sxm import naming_the_file, read_sxm

from .clicks import add_examples
from .eval_segment import MATCH_RADIUS_NM, DetectionScore, match_points, scan_resampled_interval
from .sim.truth import TruthDefect as TruthPoint  # the truth files' defects

log = logging.getLogger(__name__)

EDGE_NM = 2.0  # a click is at least this far from the frame's edge
CLEAR_NM = 1.5  # ... and this far from any other defect (beyond both footprints)


def read_truth_points(sxm: Path) -> list[TruthPoint]:
    """The true defects of ``sxm`` from ``NAME.truth.json`` (those on acquired lines only)."""
    doc_path = sxm.with_name(sxm.stem + ".truth.json")
    if not doc_path.exists():
        raise FileNotFoundError(f"{sxm}: no truth file {doc_path.name} beside it (eval oneclick needs labelled scans)")
    doc = json.loads(doc_path.read_text())
    return [TruthPoint(d["cls"], float(d["row"]), float(d["col"]), float(d["x_m"]), float(d["y_m"]),
                       float(d.get("radius_nm", 0.8))) for d in doc["defects"]]


def acquired_points(scan, points: list[TruthPoint]) -> list[TruthPoint]:
    """The points on lines the scan acquired (an aborted scan's missing lines are not counted)."""
    frame = scan.topography().frames()[0]
    acquired = ~np.isnan(frame).all(axis=1)
    return [p for p in points if acquired[int(np.clip(round(p.row), 0, len(acquired) - 1))]]


def clear_examples(scan, points: list[TruthPoint]) -> list[TruthPoint]:
    """The points an operator would click: away from the edge and from other defects."""
    nm_row = scan.range_m[1] * 1e9 / scan.shape[0]
    nm_col = scan.range_m[0] * 1e9 / scan.shape[1]
    rows, cols = scan.shape
    out = []
    for i, p in enumerate(points):
        if min(p.row * nm_row, (rows - 1 - p.row) * nm_row, p.col * nm_col, (cols - 1 - p.col) * nm_col) < EDGE_NM:
            continue
        if any(j != i and np.hypot(p.x_m - q.x_m, p.y_m - q.y_m) * 1e9 < p.radius_nm + q.radius_nm + CLEAR_NM
               for j, q in enumerate(points)):
            continue
        out.append(p)
    return out


class ClickScans:
    """The scans clicks are cut from, each read and prepared (``preprocess.prepare`` for
    ``surface``) at most once: kept by :func:`evaluate_oneclick` across the draws of ``repeats``."""

    def __init__(self, surface: str, preprocess=None):
        self.surface, self.preprocess = surface, preprocess
        self._scans: dict[Path, object] = {}
        self._prepared: dict[Path, object] = {}

    def scan(self, path: Path):
        if path not in self._scans:
            self._scans[path] = read_sxm(path)
        return self._scans[path]

    def prepared(self, path: Path):
        from .preprocess import prepare

        if path not in self._prepared:
            self._prepared[path] = prepare(self.scan(path), self.surface, self.preprocess)
        return self._prepared[path]


def build_support(scans: list[Path], surface: str, classes: tuple[str, ...], shots: int, folder: Path,
                  preprocess=None, per_polarity: bool = False, rng: np.random.Generator | None = None,
                  click_scans: ClickScans | None = None) -> int:
    """Click ``shots`` clear examples of every class in the first ``scans`` into ``folder``
    (``<folder>/<class>/*.npy``); returns how many scans were used. With ``per_polarity``, ``shots``
    of every class at each sign of the sample bias found among ``scans`` (filled and empty states:
    the operator clicks again after changing the bias). With ``rng``, the clicks are drawn at
    random among the clear examples of all ``scans`` (which are then all "used") instead of the
    first ones. ``click_scans`` (of this surface and preprocessing) keeps each scan as read and
    prepared for the next call. Raises ValueError when the folder does not hold that many examples
    of a class."""
    from .fewshot.crops import bias_polarity

    def polarity(scan) -> int:
        return bias_polarity(scan.bias_v) if per_polarity else 0

    click_scans = click_scans or ClickScans(surface, preprocess)  # each scan read (and prepared) once
    scan_of, prepared_of = click_scans.scan, click_scans.prepared

    signs = sorted({polarity(scan_of(path)) for path in scans}) if per_polarity else [0]
    need = {(c, s): shots for c in classes for s in signs}
    if rng is not None:  # every clear example of every scan, then a random draw per class (and polarity)
        candidates: dict[tuple[str, int], list] = {}
        for path in scans:
            scan = scan_of(path)
            for p in clear_examples(scan, acquired_points(scan, read_truth_points(path))):
                candidates.setdefault((p.cls, polarity(scan)), []).append((path, scan, p))
        for key, n in need.items():
            pool = candidates.get(key, [])
            for k in rng.permutation(len(pool))[:n]:
                path, scan, p = pool[k]
                add_examples(folder, p.cls, scan, surface, [(p.row, p.col)], preprocess, stem=path.stem,
                             prepared=prepared_of(path))
                need[key] -= 1
        used = len(scans)
    else:
        for used, path in enumerate(scans, start=1):
            scan = scan_of(path)
            sign = polarity(scan)
            for p in clear_examples(scan, acquired_points(scan, read_truth_points(path))):
                if need.get((p.cls, sign), 0) > 0:
                    add_examples(folder, p.cls, scan, surface, [(p.row, p.col)], preprocess, stem=path.stem,
                                 prepared=prepared_of(path))
                    need[(p.cls, sign)] -= 1
            if not any(need.values()):
                return used
    missing = {(f"{c} at {'+' if s > 0 else '-'} bias" if s else c): n for (c, s), n in need.items() if n}
    if missing:
        raise ValueError(f"the scans hold too few clear examples for {shots} per class"
                         f"{' and polarity' if per_polarity else ''}: missing {missing}")
    return used


def score_scans(analyser, scans: list[Path], radius_nm: float = MATCH_RADIUS_NM, progress=None) -> dict:
    """Label every defect of ``scans`` with ``analyser`` and score detection and labels (with 95 %
    intervals from resampling the scans: ``f1_ci95``, ``label_accuracy_ci95``)."""
    score = DetectionScore()
    per_class: dict[str, list[int]] = {}
    confusion: dict[str, dict[str, int]] = {}
    per_scan: list[tuple[int, int]] = []  # (right labels, matched defects) of each scan
    for path in scans:
        scan = read_sxm(path)
        truth = acquired_points(scan, read_truth_points(path))
        analysis = analyser.analyse(scan)
        pred = np.array([(d.x_m, d.y_m) for d in analysis.defects], dtype=float).reshape(-1, 2)
        true = np.array([(p.x_m, p.y_m) for p in truth], dtype=float).reshape(-1, 2)
        score.add(pred, true, radius_nm * 1e-9)
        right = matched = 0
        for i, j, _ in match_points(pred, true, radius_nm * 1e-9):
            label, cls = analysis.defects[i].label, truth[j].cls
            matched += 1
            right += label == cls
            per_class.setdefault(cls, [0, 0])
            per_class[cls][0] += label == cls
            per_class[cls][1] += 1
            confusion.setdefault(cls, {})
            confusion[cls][label] = confusion[cls].get(label, 0) + 1
        per_scan.append((right, matched))
        if progress is not None:
            progress()
    correct, total = sum(r for r, _ in per_scan), sum(n for _, n in per_scan)
    accuracy_interval = scan_resampled_interval(
        np.array(per_scan, dtype=float).reshape(-1, 2), lambda right, n: np.where(n > 0, right / np.maximum(n, 1), np.nan))
    return {
        "scans": len(scans), "true": score.tp + score.fn, "found": score.tp + score.fp, "matched": score.tp,
        "precision": round(score.precision, 4), "recall": round(score.recall, 4), "f1": round(score.f1, 4),
        "f1_ci95": [round(v, 4) for v in score.f1_interval()],
        "label_accuracy": round(correct / total, 4) if total else float("nan"),
        "label_accuracy_ci95": [round(v, 4) for v in accuracy_interval],
        "per_class_accuracy": {c: round(a / n, 4) for c, (a, n) in sorted(per_class.items())},
        "confusion": {c: dict(sorted(v.items())) for c, v in sorted(confusion.items())},
    }


class _SegmentOnce:
    """A segmenter that segments each scan (by its file) once and gives the same defects again:
    the draws of ``evaluate_oneclick(repeats=...)`` share one segmentation and differ only in the
    labels, which the classifier sets anew on every call. ``last_prepared`` and ``last_warnings``
    are those of the scan given last, as the segmenter's own would be."""

    def __init__(self, segmenter):
        self.segmenter, self.done = segmenter, {}
        self.last_prepared, self.last_warnings = None, []

    def __getattr__(self, name):  # name, version, surface ...
        return getattr(self.__dict__["segmenter"], name)

    def segment(self, scan):
        key = str(scan.source)
        if key not in self.done:
            defects = self.segmenter.segment(scan)
            self.done[key] = (defects, getattr(self.segmenter, "last_prepared", None),
                              list(getattr(self.segmenter, "last_warnings", [])))
        defects, self.last_prepared, self.last_warnings = self.done[key]
        return defects


def check_support_dir(support_dir: str | Path | None, surface: str, repeats: int = 1) -> None:
    """Raise ValueError naming the folder when one that :func:`evaluate_oneclick` would click into
    under ``support_dir`` (``<dir>/<surface>``, or ``<dir>/drawNN/<surface>`` per draw with
    ``repeats`` > 1) already holds class folders with crops: the clicks would be added to them. An
    empty or absent ``support_dir`` is fine."""
    if not support_dir:
        return
    base = Path(support_dir)
    folders = [base / surface] if repeats <= 1 else [base / f"draw{r:02d}" / surface for r in range(repeats)]
    for folder in folders:
        crops = sum(1 for _ in folder.glob("*/*.npy"))
        if crops:
            raise ValueError(f"{folder}: already holds {crops} clicked crops, to which this run would add its "
                             "own: give an empty or new --keep-support folder")


def check_scans(scans: list[Path]) -> None:
    """Refuse, before any work, a labelled folder with scans that do not read or lack their truth
    (``NAME.truth.json``), naming every one: an evaluation that left them out would score other
    scans than asked."""
    problems = []
    for path in scans:
        if not path.with_name(path.stem + ".truth.json").is_file():
            problems.append(f"{path}: no {path.stem}.truth.json beside it")
            continue
        try:
            read_sxm(path)
        except Exception as exc:  # any bad file: named
            problems.append(naming_the_file(path, exc))
    if problems:
        raise ValueError(f"{len(problems)} of {len(scans)} scans cannot be scored (remove or mend them): "
                         + "; ".join(problems))


def evaluate_oneclick(scan_dir: str | Path | list[Path], surface: str, make_analyser: Callable[[Path], object], shots: int = 1,
                      radius_nm: float = MATCH_RADIUS_NM, preprocess=None, support_dir: str | Path | None = None,
                      progress=None, per_polarity: bool = False, repeats: int = 1, seed: int = 0) -> dict:
    """The one-click figures of the labelled ``.sxm`` files in ``scan_dir`` (a folder, or a list
    of files; name order).

    ``make_analyser(support_folder)`` builds the analyser on the clicked support set (e.g.
    ``load_analyser(config, surface, support=folder)``). ``support_dir`` keeps the clicked set
    there (default a temporary folder); one that already holds clicks is refused
    (:func:`check_support_dir`). ``per_polarity``: the clicks are made at each bias
    polarity (:func:`build_support`).

    ``repeats`` = 1: the first clear examples are clicked, and the scans after the last one used
    are scored. ``repeats`` > 1: the first half of the scans are where the operator clicks, the
    second half are scored, and ``repeats`` sets of clicks are drawn at random there (``seed``), so
    that the figure does not hang on which example was clicked: the result is that of the first
    draw, plus ``repeats``, ``label_accuracy_repeats`` (one per draw), ``label_accuracy_mean`` and
    the 2.5 and 97.5 percentiles of the draws, ``label_accuracy_range95``, each class's accuracy
    over all draws together ``per_class_accuracy_draws`` (right / matched, pooled over the draws) and
    the confusion summed over the draws ``confusion_draws``. Returns the figures of
    :func:`score_scans` plus ``shots``, ``per_polarity``, ``clicks``, ``support_scans`` and ``eval_scans``."""
    from .surfaces import get_surface

    check_support_dir(support_dir, surface, repeats)  # before any work: an earlier run's clicks
    scans = sorted(Path(p) for p in scan_dir) if isinstance(scan_dir, list) else sorted(Path(scan_dir).glob("*.sxm"))
    if len(scans) < 2:
        raise ValueError(f"{scan_dir}: eval oneclick needs at least 2 labelled .sxm files, found {len(scans)}")
    check_scans(scans)
    classes = get_surface(surface).classes
    half = max(1, len(scans) // 2)
    results, memo, click_scans = [], None, ClickScans(surface, preprocess)  # shared by every draw
    with tempfile.TemporaryDirectory(prefix="oneclick-") as tmp:
        for r in range(max(1, repeats)):
            base = Path(support_dir) if support_dir else Path(tmp)
            folder = base / surface if repeats <= 1 else base / f"draw{r:02d}" / surface
            rng = np.random.default_rng([seed, r]) if repeats > 1 else None
            used = build_support(scans[:half], surface, classes, shots, folder, preprocess, per_polarity, rng,
                                 click_scans)
            clicks = sum(1 for _ in folder.glob("*/*.npy"))
            analyser = make_analyser(folder)
            if repeats > 1 and dataclasses.is_dataclass(analyser) and hasattr(analyser, "segmenter"):
                # the draws differ in their clicks only: segment each scored scan once
                memo = memo or _SegmentOnce(analyser.segmenter)
                analyser = dataclasses.replace(analyser, segmenter=memo)
            result = score_scans(analyser, scans[used:], radius_nm, progress)
            result.update({"surface": surface, "shots": shots, "per_polarity": per_polarity, "clicks": clicks,
                           "support_scans": used, "eval_scans": len(scans) - used, "radius_nm": radius_nm,
                           "model_versions": dict(getattr(analyser, "model_versions", {}))})
            results.append(result)
    result = results[0]
    if repeats > 1:
        draws = [x["label_accuracy"] for x in results]
        result.update({"repeats": len(draws), "label_accuracy_repeats": draws,
                       "label_accuracy_mean": round(float(np.mean(draws)), 4),
                       "label_accuracy_range95": [round(float(v), 4) for v in np.percentile(draws, [2.5, 97.5])]})
        confusion: dict[str, collections.Counter] = {}
        for x in results:
            for cls, row in x["confusion"].items():
                confusion.setdefault(cls, collections.Counter()).update(row)
        result["confusion_draws"] = {c: dict(sorted(v.items())) for c, v in sorted(confusion.items())}
        result["per_class_accuracy_draws"] = {c: round(v[c] / sum(v.values()), 4) for c, v in sorted(confusion.items())}
    log.info("oneclick %s: %s", surface, result)
    return result
