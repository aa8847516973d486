"""Does a scan show the surface the models were told to expect? A check on its atomic rows.

The models are trained on one surface at a time (``[models] surface``); on a scan of anything else
(a moiré, a metal, an AFM image) the UNet still marks spots, confidently and wrongly. Every
trained surface has atomic rows with a known period (``Surface.row_nm``: 0.768 nm on Si(001):H,
0.800 nm on Ge(001), 0.649 nm on TiO2(110)), which shows in the power spectrum as a ring at
1/row_nm. :func:`row_contrast` is the mean power on that ring (±12 %) over the mean power just
beside it (25-50 % away), on the preprocessed image (0.1 nm per pixel, Hann window).

Measured here: 75 simulated scans with every artefact on (25 per surface) gave 0.92-33; the
10 nm moiré scans in ``shared/data/real`` (not a trained surface) 0.15 and 0.11 for Si(001):H;
the 2 nm AFM and 4 nm Au/mica scans are too small to tell (fewer than 6 row periods across).
Below :data:`ROW_CONTRAST_MIN`, and on a scan too small to tell, the analyser warns; the defects
are still reported.

A scan of another trained surface can still leak enough power onto the ring to pass (a TiO2(110)
scan processed as Si(001):H: 0.9-3.8). So the analyser also warns when the rows of another trained
surface, with a period more than 12 % away (TiO2(110) against Si(001):H or Ge(001); those two are
4 % apart and cannot be told apart this way), are seen far more clearly: a contrast of at least
:data:`OTHER_ROWS_MIN` and :data:`OTHER_ROWS_RATIO` times the configured surface's. Chosen on
the 24 training-style scans per surface of docs/adapt.md (there, on the right surface, the other
surfaces' contrast was at most 1.8 times the own). On those and the 36 foreign-style ones per
surface it added no warning on the right surface. With it, the analyser warns on every
training-style TiO2(110) scan processed as Si(001):H (before: 17 %), on 96 % of the foreign-style
ones (33 %), and on 96 % / 54 % of the training-style Si(001):H / Ge(001) scans processed as
TiO2(110) (8 % / 0 %).
The spectrum is taken over the acquired part of the scan (at most its central 1024² pixels).
"""
from __future__ import annotations

import numpy as np

from .preprocess import Prepared
from .surfaces import SURFACES, Surface

ROW_CONTRAST_MIN = 0.6
OTHER_ROWS_MIN = 2.0  # another surface's rows count as seen from this contrast ...
OTHER_ROWS_RATIO = 3.0  # ... and this many times the configured surface's


def rfft_frequency(shape: tuple[int, int], nm_per_px: float) -> np.ndarray:
    """``|k|`` (cycles per nm) of each coefficient of ``np.fft.rfft2`` of an image of ``shape``
    with square pixels of ``nm_per_px``."""
    h, w = shape
    return np.hypot(*np.meshgrid(np.fft.fftfreq(h, nm_per_px), np.fft.rfftfreq(w, nm_per_px), indexing="ij"))


def row_contrast(image: np.ndarray, valid: np.ndarray, row_nm: float, nm_per_px: float,
                 max_px: int = 1024) -> float:
    """Power on the ring of spatial frequency ``1 / row_nm`` over the power just beside it, for
    ``image`` ``(H, W)`` (display frame, ``nm_per_px`` square pixels; pixels where ``valid`` is
    False count as the mean). ≫ 1: rows of that period are seen; ≲ 1: not; NaN: the acquired
    part (the bounding box of ``valid``) is narrower than 6 row periods, too small to tell. A
    larger image is judged on its central ``max_px`` square."""
    return row_contrasts(image, valid, [row_nm], nm_per_px, max_px)[0]


def row_contrasts(image: np.ndarray, valid: np.ndarray, rows_nm: list[float], nm_per_px: float,
                  max_px: int = 1024) -> list[float]:
    """:func:`row_contrast` at each period of ``rows_nm``, from one power spectrum."""
    nan = [float("nan")] * len(rows_nm)
    valid = np.asarray(valid, dtype=bool)
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if len(rows) == 0:
        return nan
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    image, valid = np.asarray(image, dtype=np.float32)[box], valid[box]
    h, w = (min(n, max_px) for n in image.shape)
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    image, valid = image[top:top + h, left:left + w], valid[top:top + h, left:left + w]
    if valid.sum() < 0.5 * h * w:
        return nan
    centred = np.where(valid, image - image[valid].mean(), 0.0).astype(np.float32)
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    power = np.abs(np.fft.rfft2(centred * window)) ** 2
    k = rfft_frequency((h, w), nm_per_px)
    out = []
    for row_nm in rows_nm:
        k0 = 1.0 / row_nm
        ring = np.abs(k - k0) < 0.12 * k0
        beside = (np.abs(k - k0) > 0.25 * k0) & (np.abs(k - k0) < 0.5 * k0)
        if min(h, w) * nm_per_px < 6 * row_nm or not ring.any() or not beside.any() or power[beside].mean() == 0:
            out.append(float("nan"))
        else:
            out.append(float(power[ring].mean() / power[beside].mean()))
    return out


def surface_mismatch(prepared: Prepared, surface: Surface) -> str | None:
    """A one-line warning when ``prepared`` does not show ``surface``'s atomic rows, or is too
    small to tell (narrower than 6 row periods: a 2 nm AFM scan, a 4 nm scan of a molecule);
    None when it shows them (or too little of it was acquired to judge)."""
    # other trained surfaces whose rows are more than 12 % from these: told apart by their period
    others = [o for o in SURFACES.values() if o.row_nm and abs(o.row_nm - surface.row_nm) > 0.12 * surface.row_nm]
    contrast, *other_contrasts = row_contrasts(prepared.image[0], prepared.valid,
                                               [surface.row_nm] + [o.row_nm for o in others], surface.nm_per_px)
    if np.isnan(contrast):
        h, w = (n * surface.nm_per_px for n in prepared.image.shape[-2:])
        if min(h, w) < 6 * surface.row_nm:
            return (f"this {w:.2g} x {h:.2g} nm scan is too small to check that it shows {surface.title} "
                    f"(fewer than 6 rows, {surface.row_nm} nm apart, across): is it a {surface.title} scan "
                    f"([models] surface, --surface)? The models only know {surface.title}-like surfaces; "
                    "a defect here may be the whole feature imaged")
        return None
    if not contrast < ROW_CONTRAST_MIN:
        clearer = [(c, o) for c, o in zip(other_contrasts, others)
                   if c >= OTHER_ROWS_MIN and c >= OTHER_ROWS_RATIO * contrast]
        if not clearer:
            return None
        other_contrast, other = max(clearer, key=lambda pair: pair[0])
        return (f"the rows of this scan are {other.row_nm} nm apart, as on {other.title}, not {surface.row_nm} nm "
                f"as on {surface.title} (row contrast {other_contrast:.1f} against {contrast:.1f}): "
                f"is it a {other.title} scan ([models] surface, --surface)? Defects are reported anyway, "
                f"but labelled as {surface.title} defects")
    return (f"the {surface.title} rows ({surface.row_nm} nm apart) are not seen in this scan (row contrast "
            f"{contrast:.2f} < {ROW_CONTRAST_MIN}): is it a {surface.title} scan ([models] surface, --surface)? "
            f"Defects are reported anyway, but the models only know {surface.title}-like surfaces")
