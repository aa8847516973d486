"""A defect's contrast against the lattice round it, as a third cue for the few-shot classifier.

The embedding sees each crop normalised on its own (``TrainConfig.crop_norm``), so it cannot tell
two classes that differ mostly in height: on TiO2(110) an O vacancy, a hydroxyl and a Ti
interstitial are all bright spots of rising height in empty states. The crops as cut from a
prepared scan carry the *scan's* normalisation (median 0, robust spread 1: docs/design.md), so
their contrast is measured against the scan's own spread, whatever the microscope's gain.

:func:`core_contrast` is the mean of the crop's core (within :data:`CORE_PX` of the centre pixel
``size // 2``) less the median of the ring that the site cue uses (:data:`.site.RING_PX`),
channel 0, through ``arcsinh`` (so that tall adatoms do not spread their class over everything).

A defect's contrast changes sign with the bias polarity for some classes (Si's incorporated As is
bright in one and dark in the other). So each class's Gaussian on it (:class:`.site.ClassGaussian`) is
fitted on the crops at the polarity of the scan being labelled only: its clicks there, the scan's
own defects and the pool's crops at that polarity (:mod:`.transductive`). ``WEIGHT`` and ``FLOOR``
were set before any measurement, not tuned: the site cue's weight, and a variance floor of about
the spread of one class's contrast among the shipped support crops (sd 0.2-0.4 for most classes;
those that swap contrast with the bias spread wider). Chosen on fresh training-style scans
(docs/adapt.md, stop 30). The shipped support crops are each normalised on their own, not in a
scan's units, so with them (no click) the cue reads a slightly different scale; clicked crops are
cut in their scan's units.
"""
from __future__ import annotations

import functools

import numpy as np

from .site import RING_PX

WEIGHT = 0.5  # the contrast's negative log-likelihood, against the network's logits (-T d^2)
FLOOR = 0.1  # the least variance of a class's arcsinh contrast
CORE_PX = 2.5  # the core's radius, model pixels (0.1 nm)


@functools.lru_cache(maxsize=8)
def _masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The core's and the ring's pixels of a ``size²`` crop, flattened."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    radius = np.hypot(yy, xx).ravel()
    return radius <= CORE_PX, (radius >= RING_PX[0]) & (radius <= RING_PX[1])


def core_contrast(crops: np.ndarray) -> np.ndarray:
    """``crops`` ``(n, C, H, W)`` at the model scale in the scan's normalised units (channel 0 is
    used) → ``(n,)`` float32: ``arcsinh`` of the core's mean less the ring's median (see the
    module's docstring). A crop too small for the whole ring (under 32 px) gives 0."""
    crops = np.nan_to_num(np.asarray(crops, dtype=np.float32))
    size = crops.shape[-1] if crops.ndim == 4 else 0
    if len(crops) == 0 or size // 2 + RING_PX[1] >= size or crops.shape[-2] != size:
        return np.zeros(len(crops), np.float32)
    core, ring = _masks(size)
    x = crops[:, 0].reshape(len(crops), -1)
    return np.arcsinh(x[:, core].mean(axis=1) - np.median(x[:, ring], axis=1)).astype(np.float32)
