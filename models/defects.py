"""What a segmenter finds and a classifier names: one :class:`Defect` per connected component."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Defect:
    """A defect in one scan.

    ``row``/``col`` are display-frame pixel indices of the scan as read (fractional; an integer
    is a pixel centre), ``x_m``/``y_m`` the scanner-frame position in metres (from
    ``Scan.pixel_to_scanner``), ``area_px`` the component's area in scan pixels, ``score`` the
    segmenter's mean probability, ``label``/``label_score`` the classifier's answer.
    ``crop`` is a ``(channels, h, w)`` float32 cut-out at the model scale, for the classifier.
    """

    row: float
    col: float
    x_m: float
    y_m: float
    area_px: float
    score: float
    label: str = "defect"
    label_score: float | None = None
    crop: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def as_dict(self) -> dict:
        """The JSON form used by ``process --json``, the database and overlays."""
        return {
            "x_px": round(float(self.col), 3),
            "y_px": round(float(self.row), 3),
            "x_m": float(self.x_m),
            "y_m": float(self.y_m),
            "label": self.label,
            "score": round(float(self.label_score if self.label_score is not None else self.score), 4),
            "area_px": round(float(self.area_px), 2),
        }


def count_labels(defects: list[Defect]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in defects:
        counts[d.label] = counts.get(d.label, 0) + 1
    return dict(sorted(counts.items()))
