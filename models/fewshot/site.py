"""The lattice site a defect sits on, as a second cue for the few-shot classifier.

Many defects of one class sit on the same kind of lattice site: on TiO2(110) hydroxyls and O
vacancies on the bridging-oxygen rows, Ti interstitials on the Ti rows. The embedding sees a crop
normalised on its own, and may not tell those looks apart on another microscope. The site does
not depend on the microscope: it is where the crop's centre falls in the row modulation around it.

:func:`row_phase_cos` measures it: the strongest Fourier component at the surface's row period
(any direction, the period within ±15 %) on a ring 0.7-1.5 nm round the crop's centre (the
defect's own core is left out), and the cosine of its phase at the centre: +1 when the centre
lies on a bright row's crest, -1 in a trough. The cosine does not depend on which way the wave
vector points.

:class:`SiteModel` is a Gaussian per class on that value. Its mean and variance are learnt on
the clicks together with the unlabelled crops each class attracts (the transductive step of
:mod:`.transductive`), so a class whose members sit anywhere (adatoms) gets a wide Gaussian and
little weight by itself, and a class tied to one site a narrow one. The variance has a floor
(``FLOOR``): a phase measured on a noisy ring is often off, and a narrower class would push those
crops to the wide classes. ``WEIGHT`` scales the Gaussian's negative log-likelihood against the
network's logits. Both were chosen on training-style and validation scans only (docs/adapt.md,
"The lattice site as a second cue").
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

WEIGHT = 0.5  # the site's negative log-likelihood, against the network's logits (-T d^2)
FLOOR = 0.2  # the least variance of a class's cos phase
RING_PX = (7.0, 15.0)  # the ring round the crop's centre, model pixels (0.1 nm)
PERIOD_SPREAD = 0.15  # the row period is searched within ±15 %


@functools.lru_cache(maxsize=8)
def _ring_basis(size: int, period_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ring's pixels (a mask of the ``size²`` flattened crop) and the cosine and sine waves
    ``(ring pixels, waves)`` on them, for 90 directions x 13 periods."""
    centre = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - centre
    ring = ((np.hypot(yy, xx) >= RING_PX[0]) & (np.hypot(yy, xx) <= RING_PX[1])).ravel()
    angles = np.linspace(0.0, np.pi, 90, endpoint=False)
    freqs = np.linspace(1 - PERIOD_SPREAD, 1 + PERIOD_SPREAD, 13) / period_px
    kx = (np.cos(angles)[:, None] * freqs[None]).ravel()
    ky = (np.sin(angles)[:, None] * freqs[None]).ravel()
    arg = 2 * np.pi * (xx.ravel()[ring, None] * kx[None] + yy.ravel()[ring, None] * ky[None])
    return ring, np.cos(arg).astype(np.float32), np.sin(arg).astype(np.float32)


def row_phase_cos(crops: np.ndarray, period_px: float) -> np.ndarray:
    """``crops`` ``(n, C, H, W)`` at the model scale (channel 0 is used) → ``(n,)`` the cosine of
    the phase of the row modulation at each crop's centre (see the module's docstring);
    ``period_px`` is the row period in the crops' pixels. Crops too small for the ring give 0
    each, so that every class's Gaussian is alike and the cue has no effect."""
    crops = np.nan_to_num(np.asarray(crops, dtype=np.float32))
    ring, cos, sin = _ring_basis(crops.shape[-1], float(period_px))
    if len(crops) == 0 or ring.sum() < 16:  # no crops, or too small for the ring: no site information
        return np.zeros(len(crops), np.float32)
    x = crops[:, 0].reshape(len(crops), -1)[:, ring]
    x = x - np.median(x, axis=1, keepdims=True)
    re, im = x @ cos, -(x @ sin)
    best = np.argmax(re ** 2 + im ** 2, axis=1)
    rows = np.arange(len(crops))
    return np.cos(np.arctan2(im[rows, best], re[rows, best])).astype(np.float32)


@dataclasses.dataclass
class SiteModel:
    """A Gaussian per class on the cos phase: ``mean`` and ``var`` ``(classes,)``."""

    mean: torch.Tensor
    var: torch.Tensor

    @classmethod
    def fit(cls, one_hot: torch.Tensor, support_phase: torch.Tensor, weights: torch.Tensor | None = None,
            phase: torch.Tensor | None = None, floor: float = FLOOR) -> "SiteModel":
        """From the clicks (``one_hot`` ``(s, classes)``, their ``support_phase`` ``(s,)``) and
        unlabelled crops' ``phase`` ``(n,)`` with their soft class ``weights`` ``(n, classes)``."""
        count, total, square = one_hot.sum(0), one_hot.T @ support_phase, one_hot.T @ support_phase.pow(2)
        if weights is not None and len(weights):
            count, total, square = count + weights.sum(0), total + weights.T @ phase, square + weights.T @ phase.pow(2)
        mean = total / count
        return cls(mean, (square / count - mean.pow(2)).clamp_min(floor))

    def penalty(self, phase: torch.Tensor, weight: float = WEIGHT) -> torch.Tensor:
        """``(n, classes)``: ``weight`` x the negative log-likelihood (without its constant) of each
        crop's ``phase`` ``(n,)`` under each class's Gaussian; to be subtracted from the logits."""
        return weight * 0.5 * ((phase[:, None] - self.mean[None]).pow(2) / self.var[None] + self.var.log()[None])
