"""The operator's clicks: a labelled example cut from a scan at a clicked pixel (``support add``).

One code path for ``stmwatch support add``, ``stmwatch eval oneclick`` and ``stmwatch adapt``: the
scan is prepared exactly as for the models and the crop cut with the segmenter's own ``crops_at``.
A support set is a folder ``<dir>/<class>/*.npy`` of ``(2, 32, 32)`` float32 crops.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stmwatch.drivers.scan import Scan


def cut_crop(scan: Scan, surface: str, row: float, col: float, preprocess=None):
    """The ``(2, 32, 32)`` classifier crop centred on scan display pixel ``(row, col)``: the scan
    is prepared as for the models, the position mapped to model pixels with ``Prepared.from_scan``
    and cut with the segmenter's own ``crops_at``. Returns ``(crop, (model_row, model_col))``."""
    from .preprocess import prepare
    from .segment import crops_at

    prepared = prepare(scan, surface, preprocess)
    r, c = prepared.from_scan(row, col)
    return crops_at(prepared.image, [float(r)], [float(c)])[0], (float(r), float(c))


def parse_points(text: str | list[str]) -> list[tuple[float, float]]:
    """``"ROW,COL"`` or ``"R1,C1;R2,C2"`` (or a list of such strings) → ``[(row, col), ...]``."""
    items = [text] if isinstance(text, str) else list(text)
    points = []
    for item in items:
        for part in item.replace(" ", "").split(";"):
            if not part:
                continue
            try:
                row, col = (float(v) for v in part.split(","))
            except ValueError:
                raise ValueError(f"--at must be ROW,COL (scan pixels), not {part!r}") from None
            points.append((row, col))
    if not points:
        raise ValueError("no --at point given")
    return points


def points_without_data(prepared, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The clicked ``(row, col)`` (scan pixels) whose crop would be mostly lines the scan never
    acquired (``prepared.valid``): a flat, empty example of its class."""
    from .segment import CROP_PX

    half, out = CROP_PX // 2, []
    for row, col in points:
        r, c = (int(round(float(v))) for v in prepared.from_scan(row, col))
        window = prepared.valid[max(r - half, 0):max(r + half, 0), max(c - half, 0):max(c + half, 0)]
        if window.size and window.mean() < 0.5:  # none: outside the scan, which add_examples names
            out.append((row, col))
    return out


def add_examples(folder: str | Path, label: str, scan: Scan, surface: str, points: list[tuple[float, float]],
                 preprocess=None, stem: str | None = None, prepared=None) -> list[tuple[Path, tuple[float, float]]]:
    """Save one crop per ``(row, col)`` of ``scan`` (display-frame scan pixels) as examples of
    class ``label`` in the support folder ``folder``, each with a sidecar ``.json`` (scan, pixel, the
    scan's sample bias ``bias_v``); the scan is prepared once (or ``prepared`` is
    ``prepare(scan, surface, preprocess)`` already made by the caller).
    Returns ``[(path, (model_row, model_col)), ...]``. Points outside the scan raise ValueError."""
    from .preprocess import prepare
    from .segment import crops_at

    rows, cols = scan.shape
    for row, col in points:
        if not (-0.5 <= row <= rows - 0.5 and -0.5 <= col <= cols - 0.5):
            raise ValueError(f"point {row:g},{col:g} is outside the {rows} x {cols} scan")
    prepared = prepared if prepared is not None else prepare(scan, surface, preprocess)
    target = Path(folder) / label
    target.mkdir(parents=True, exist_ok=True)
    n = len(list(target.glob("*.npy")))
    stem = stem or (Path(scan.source).stem if scan.source else "scan")
    out = []
    for k, (row, col) in enumerate(points):
        r, c = prepared.from_scan(row, col)
        crop = crops_at(prepared.image, [float(r)], [float(c)])[0]
        path = target / f"{stem}_r{row:g}_c{col:g}_{n + k:03d}.npy"
        np.save(path, crop)
        path.with_suffix(".json").write_text(json.dumps(  # where it came from; the bias picks its polarity
            {"scan": str(scan.source or stem), "row": float(row), "col": float(col), "bias_v": scan.bias_v}))
        out.append((path, (float(r), float(c))))
    return out


def least_sure(analysis, classifier, n: int = 10) -> list[dict]:
    """The ``n`` defects of ``analysis`` the few-shot ``classifier`` is least sure of, so the
    operator knows where another click helps most: sorted by the margin between the nearest and
    the second-nearest prototype, ``(d2 - d1) / (d2 + d1)`` of the classifier's distances (squared
    embedding distances, plus the lattice-site penalty where the classifier uses it; 0: half-way
    between two classes, 1: on a prototype; the softmax probabilities saturate with a Euclidean
    metric, the relative gap does not). Each: ``row``, ``col`` (scan display pixels),
    ``label``, ``nearest``, ``p`` (its probability), ``second``, ``p_second``, ``margin``."""
    import torch

    defects = [d for d in analysis.defects if d.crop is not None]
    if not defects or classifier is None or len(getattr(classifier, "labels", [])) < 2:
        return []
    bias_v = getattr(getattr(analysis, "scan", None), "bias_v", None)  # prototypes of the scan's polarity
    d2 = classifier.distances(np.stack([d.crop for d in defects]), bias_v)
    temperature = float(getattr(getattr(classifier, "net", None), "temperature", 1.0))
    p = torch.softmax(torch.from_numpy(-temperature * d2), dim=1).numpy()
    out = []
    for i, d in enumerate(defects):
        a, b = np.argsort(d2[i])[:2]
        gap = (d2[i, b] - d2[i, a]) / max(float(d2[i, b] + d2[i, a]), 1e-12)
        out.append({"row": round(float(d.row), 2), "col": round(float(d.col), 2), "label": d.label,
                    "nearest": classifier.labels[a], "p": round(float(p[i, a]), 4), "second": classifier.labels[b],
                    "p_second": round(float(p[i, b]), 4), "margin": round(float(gap), 4)})
    out.sort(key=lambda r: r["margin"])
    return out[:n]


def unclicked_at_polarity(support, bias_v: float | None) -> list[str]:
    """The classes of ``support`` (a :class:`~stmwatch.models.fewshot.crops.CropSet`) clicked only
    at the other bias polarity than ``bias_v`` (V): for a scan at that bias they fall back on
    another polarity's look, so a click in this scan helps. Empty when the bias or the clicks'
    biases are unknown."""
    from .fewshot.crops import bias_polarity

    sign = bias_polarity(bias_v)
    if sign == 0:
        return []
    out = []
    for label in support.labels:
        polarity = support.polarity(label)
        if (polarity != 0).all() and not (polarity == sign).any():
            out.append(label)
    return out
