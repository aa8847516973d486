"""Does a scan show the surface the models were told to expect? A check on its atomic rows.

The models are trained on one surface at a time (``[models] surface``); on a scan of anything else
(a moiré, a metal, an AFM image) the UNet still marks spots, confidently and wrongly. Every
trained surface has atomic rows with a known period (``Surface.row_nm``: 0.768 nm on Si(001):H,
0.800 nm on Ge(001), 0.649 nm on TiO2(110)), which shows in the power spectrum as a ring at
1/row_nm. :func:`row_contrast` is the mean power on that ring (±12 %) over the mean power just
beside it (25-50 % away), on the preprocessed image (0.1 nm per pixel, Hann window).

Measured here: 75 simulated scans with every artefact on (25 per surface) gave 0.89-33; the
real files in ``shared/data/real`` (moiré, Au/mica, AFM; none of the trained surfaces) gave
0.15-0.58 for Si(001):H. Below :data:`ROW_CONTRAST_MIN` the analyser logs a warning; the
defects are still reported.
"""
from __future__ import annotations

import numpy as np

from .preprocess import Prepared
from .surfaces import Surface

ROW_CONTRAST_MIN = 0.6


def row_contrast(image: np.ndarray, valid: np.ndarray, row_nm: float, nm_per_px: float) -> float:
    """Power on the ring of spatial frequency ``1 / row_nm`` over the power just beside it, for
    ``image`` ``(H, W)`` (display frame, ``nm_per_px`` square pixels; pixels where ``valid`` is
    False count as the mean). ≫ 1: rows of that period are seen; ≲ 1: not."""
    image = np.asarray(image, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    if valid.sum() < 16:
        return 0.0
    centred = np.where(valid, image - image[valid].mean(), 0.0)
    h, w = centred.shape
    power = np.abs(np.fft.fft2(centred * np.outer(np.hanning(h), np.hanning(w)))) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(h, nm_per_px), np.fft.fftfreq(w, nm_per_px), indexing="ij"))
    k0 = 1.0 / row_nm
    ring = np.abs(k - k0) < 0.12 * k0
    beside = (np.abs(k - k0) > 0.25 * k0) & (np.abs(k - k0) < 0.5 * k0)
    if not ring.any() or not beside.any() or power[beside].mean() == 0:
        return 0.0
    return float(power[ring].mean() / power[beside].mean())


def surface_mismatch(prepared: Prepared, surface: Surface) -> str | None:
    """A one-line warning when ``prepared`` does not show ``surface``'s atomic rows, else None."""
    contrast = row_contrast(prepared.image[0], prepared.valid, surface.row_nm, surface.nm_per_px)
    if contrast >= ROW_CONTRAST_MIN:
        return None
    return (f"the {surface.title} rows ({surface.row_nm} nm apart) are not seen in this scan (row contrast "
            f"{contrast:.2f} < {ROW_CONTRAST_MIN}): is it a {surface.title} scan ([models] surface, --surface)? "
            f"Defects are reported anyway, but the models only know {surface.title}-like surfaces")
