"""Robust statistics shared by preprocessing, the classifier's crops and the simulator."""
from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826  # median absolute deviation × this = standard deviation of a Gaussian


def median(values: np.ndarray, axis: int | None = None, overwrite: bool = False):
    """Median of finite, non-empty ``values`` (flattened, or along ``axis``), as ``np.median``
    gives it, from one partition at the middle (``np.median`` partitions at both middle positions
    and checks for NaN: several times slower on a whole image). ``overwrite``: partition
    ``values`` in place (a temporary of the caller's) instead of a copy."""
    if axis is None:
        values = np.ravel(values)
        axis = 0
    n = values.shape[axis]
    k = n // 2
    if overwrite and values.flags.writeable:
        part = values
        part.partition(k, axis=axis)
    else:
        part = np.partition(values, k, axis=axis)
    before = (slice(None),) * (axis % values.ndim)
    upper = part[before + (k,)]
    if n % 2:
        return float(upper) if upper.ndim == 0 else upper.copy()
    lower = part[before + (slice(0, k),)].max(axis=axis)  # a view: no copy of the lower half
    middle = (lower + upper) / 2
    return float(middle) if middle.ndim == 0 else middle


def finite_values(values: np.ndarray) -> np.ndarray:
    """The finite values of ``values``, flattened (no copy when all are finite)."""
    values = np.ravel(np.asarray(values, dtype=float))
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def centre_and_sigma(values: np.ndarray) -> tuple[float, float]:
    """Median and robust sigma (see :func:`robust_sigma`) of finite, non-empty 1-D ``values``."""
    centre = median(values)
    deviation = values - centre
    mad = median(np.abs(deviation, out=deviation), overwrite=True)
    return centre, (MAD_TO_SIGMA * mad if mad > 0 else float(values.std()))


def robust_sigma(values: np.ndarray) -> float:
    """Robust standard deviation of the finite ``values``: 1.4826 × median absolute deviation.

    Falls back to the ordinary standard deviation when more than half the values are equal (MAD 0),
    and returns 0.0 for constant or empty input.
    """
    values = finite_values(values)
    if values.size == 0:
        return 0.0
    return centre_and_sigma(values)[1]
