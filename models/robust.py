"""Robust statistics shared by preprocessing, the classifier's crops and the simulator."""
from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826  # median absolute deviation × this = standard deviation of a Gaussian


def robust_sigma(values: np.ndarray) -> float:
    """Robust standard deviation of the finite ``values``: 1.4826 × median absolute deviation.

    Falls back to the ordinary standard deviation when more than half the values are equal (MAD 0),
    and returns 0.0 for constant or empty input.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    if mad > 0:
        return MAD_TO_SIGMA * mad
    return float(values.std())
