"""The ground truth of a simulated scan (both styles: :mod:`.simulate` and :mod:`.foreign`)."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..surfaces import get_surface


@dataclasses.dataclass
class TruthDefect:
    """A simulated defect: ``row``/``col`` are fractional display-frame pixels of the forward
    frame (an integer is a pixel centre), ``x_m``/``y_m`` the scanner-frame metres of that pixel
    (``Scan.pixel_to_scanner``), ``radius_nm`` the radius of its footprint in the mask."""

    cls: str
    row: float
    col: float
    x_m: float
    y_m: float
    radius_nm: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Truth:
    """What a simulated scan contains. ``mask`` is ``(rows, cols)`` uint8: 0 background, else the
    index + 1 of the defect's class in ``Surface.classes``; it is zero on lines never acquired,
    and only defects on acquired lines are listed."""

    surface: str
    defects: list[TruthDefect]
    mask: np.ndarray
    bias_v: float | None = None
    seed: int | None = None
    artefacts: dict = dataclasses.field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return get_surface(self.surface).classes

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.defects:
            out[d.cls] = out.get(d.cls, 0) + 1
        return dict(sorted(out.items()))
