"""Preprocessing of STM frames: plain numpy functions on display-frame arrays.

(Being written: see issue 3. ``PreprocessSettings`` is the ``[preprocess]`` config section.)
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PreprocessSettings:
    steps: list[str] = dataclasses.field(
        default_factory=lambda: ["fill_nan", "plane", "align_rows", "repair_scars", "resample", "normalise"])

    def check(self) -> None:
        pass
