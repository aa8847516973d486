"""A classical stand-in segmenter: smoothed, normalised topography → blobs above a threshold.

It follows the :class:`~stmwatch.models.analyse.Segmenter` protocol so that the daemon's pipeline
can be exercised quickly and without trained weights (tests, ``[daemon] analyser = "standin"``).
It is *not* the method of stmwatch -- the shipped analyser is the UNet + few-shot classifier from
:func:`stmwatch.models.load.load_analyser`.

Steps: :func:`stmwatch.models.preprocess.prepare` (level, align rows, resample to the surface's
``nm_per_px``, normalise to median 0 / robust spread 1); the mean of the channels, smoothed by a
Gaussian of ``sigma_nm``; pixels whose smoothed value is above ``threshold`` times its robust
spread form 8-connected components; each component with at least ``min_area_px`` model pixels
is a defect at its weighted centroid (model pixels → scan pixels → scanner metres).
"""
from __future__ import annotations

import time

import numpy as np

from stmwatch.drivers.scan import Scan

from .defects import Defect
from .preprocess import PreprocessSettings, prepare
from .robust import robust_sigma
from .segment import defects_at, find_components
from .surfaces import Surface, get_surface


def gaussian_smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (edges reflected); ``sigma_px`` in pixels."""
    if sigma_px <= 0:
        return image
    radius = max(1, int(round(3 * sigma_px)))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma_px) ** 2)
    kernel /= kernel.sum()
    out = np.pad(image, radius, mode="reflect")
    out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, out)
    out = np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, out)
    return out


class StandinSegmenter:
    """Blob detector (see the module docstring); ``abs_contrast`` also finds depressions."""

    name = "standin-blobs"
    version = "1"

    def __init__(self, surface: Surface | str = "si001h", preprocess: PreprocessSettings | None = None, *,
                 sigma_nm: float = 0.3, threshold: float = 4.0, min_area_px: int = 6, abs_contrast: bool = True):
        self.surface = get_surface(surface) if isinstance(surface, str) else surface
        self.preprocess = preprocess or PreprocessSettings()
        self.sigma_nm, self.threshold, self.min_area_px = sigma_nm, threshold, min_area_px
        self.abs_contrast = abs_contrast
        self.version = f"1-s{sigma_nm:g}-t{threshold:g}-a{min_area_px}"
        self.last_timing_ms: dict[str, float] = {}

    def segment(self, scan: Scan) -> list[Defect]:
        t0 = time.perf_counter()
        prepared = prepare(scan, self.surface, self.preprocess)
        t1 = time.perf_counter()
        image = gaussian_smooth(prepared.image.mean(axis=0).astype(np.float64), self.sigma_nm / self.surface.nm_per_px)
        if prepared.valid.any():
            image = image - np.median(image[prepared.valid])
        contrast = np.abs(image) if self.abs_contrast else image
        spread = robust_sigma(image[prepared.valid]) if prepared.valid.any() else 1.0
        score = contrast / (self.threshold * (spread or 1.0))
        # find_components thresholds at 0.5 a "probability": map score 1 (= threshold) to 0.5+
        components, _ = find_components(np.clip(score / 2, 0, 1), 0.5, self.min_area_px, prepared.valid)
        self.last_timing_ms = {"preprocess": (t1 - t0) * 1e3}
        return defects_at(scan, prepared, components)


def standin_analyser(surface: str = "si001h", preprocess: PreprocessSettings | None = None, **kwargs):
    """An :class:`~stmwatch.models.analyse.Analyser` with the stand-in segmenter and no classifier."""
    from .analyse import Analyser

    return Analyser(StandinSegmenter(surface, preprocess, **kwargs))
