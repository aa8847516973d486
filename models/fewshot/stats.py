"""Accuracy over episodes: the mean and its 95 % confidence interval, as the method reports them."""
from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.96  # two-sided 95 % quantile of the normal distribution


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, half-width)`` of the 95 % confidence interval of the mean of ``values``:
    1.96 × sample standard deviation (n − 1 in the denominator) / √n. One value gives a
    half-width of 0."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, Z95 * math.sqrt(var / n)
