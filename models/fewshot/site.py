"""The lattice site a defect sits on, as a second cue for the few-shot classifier.

Many defects of one class sit on the same kind of lattice site: on TiO2(110) hydroxyls and O
vacancies on the bridging-oxygen rows, Ti interstitials on the Ti rows. The embedding sees a crop
normalised on its own, and may not tell those looks apart on another microscope. The site does
not depend on the microscope: it is where the crop's centre falls in the row modulation around it.

:func:`row_phase_cos` measures it: the strongest Fourier component near the surface's row period
(any direction; spatial frequencies within ±15 % of the row's) on a ring 0.7-1.5 nm round the
crop's centre (the defect's own core is left out), and the cosine of its phase at the centre: +1
when the centre lies on a bright row's crest, -1 in a trough. The cosine does not depend on which
way the wave vector points. The centre is the pixel the defect is cut at (``size // 2``, as
``segment.crops_at`` cuts crops).

:class:`ClassGaussian` is a Gaussian per class on that value. Its mean and variance are learnt on
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
FREQUENCY_SPREAD = 0.15  # spatial frequencies within ±15 % of the row's are searched


@functools.lru_cache(maxsize=8)
def _ring_basis(size: int, period_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ring's pixels (a mask of the ``size²`` flattened crop) and the cosine and sine waves
    ``(ring pixels, waves)`` on them, for 90 directions x 13 frequencies; the centre is pixel
    ``(size // 2, size // 2)``."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    ring = ((np.hypot(yy, xx) >= RING_PX[0]) & (np.hypot(yy, xx) <= RING_PX[1])).ravel()
    angles = np.linspace(0.0, np.pi, 90, endpoint=False)
    freqs = np.linspace(1 - FREQUENCY_SPREAD, 1 + FREQUENCY_SPREAD, 13) / period_px
    kx = (np.cos(angles)[:, None] * freqs[None]).ravel()
    ky = (np.sin(angles)[:, None] * freqs[None]).ravel()
    arg = 2 * np.pi * (xx.ravel()[ring, None] * kx[None] + yy.ravel()[ring, None] * ky[None])
    return ring, np.cos(arg).astype(np.float32), np.sin(arg).astype(np.float32)


def row_phase_cos(crops: np.ndarray, period_px: float) -> np.ndarray:
    """``crops`` ``(n, C, H, W)`` at the model scale (channel 0 is used) → ``(n,)`` the cosine of
    the phase of the row modulation at each crop's centre (see the module's docstring);
    ``period_px`` is the row period in the crops' pixels. No site information gives 0 (then every
    class's Gaussian is alike there and the cue has no effect): crops too small for the whole
    ring (under 32 px), and a crop without any modulation on its ring."""
    crops = np.nan_to_num(np.asarray(crops, dtype=np.float32))
    size = crops.shape[-1]
    if len(crops) == 0 or size // 2 + RING_PX[1] >= size or crops.shape[-2] != size:
        return np.zeros(len(crops), np.float32)
    ring, cos, sin = _ring_basis(size, float(period_px))
    x = crops[:, 0].reshape(len(crops), -1)[:, ring]
    x = x - np.median(x, axis=1, keepdims=True)
    re, im = x @ cos, -(x @ sin)
    power = re ** 2 + im ** 2
    best = np.argmax(power, axis=1)
    rows = np.arange(len(crops))
    out = np.cos(np.arctan2(im[rows, best], re[rows, best]))
    out[power[rows, best] <= 1e-9 * x.shape[1] * (x ** 2).sum(axis=1)] = 0.0  # a flat ring: no modulation
    return out.astype(np.float32)


@dataclasses.dataclass
class ClassGaussian:
    """A Gaussian per class on one number per crop: the cos phase here, the contrast in :mod:`.contrast`:
    ``mean`` and ``var`` ``(classes,)``; ``fitted`` ``(classes,)`` False for a class that had no
    crop to fit on (None: all were)."""

    mean: torch.Tensor
    var: torch.Tensor
    fitted: torch.Tensor | None = None

    @classmethod
    def fit(cls, one_hot: torch.Tensor, support_cos: torch.Tensor, weights: torch.Tensor | None = None,
            unlabelled_cos: torch.Tensor | None = None, floor: float = FLOOR) -> "ClassGaussian":
        """From the clicks (``one_hot`` ``(s, classes)``, their row phases' cosines ``support_cos``
        ``(s,)``) and the unlabelled crops' ``unlabelled_cos`` ``(n,)`` with their soft class
        ``weights`` ``(n, classes)``: per class the weighted mean and the weighted variance (mean
        square less the squared mean), at least ``floor``. A class of no weight at all (possible
        only when clicks or crops were left out by zero rows) is not fitted."""
        count, total, square = one_hot.sum(0), one_hot.T @ support_cos, one_hot.T @ support_cos.pow(2)
        if weights is not None and len(weights):
            count = count + weights.sum(0)
            total, square = total + weights.T @ unlabelled_cos, square + weights.T @ unlabelled_cos.pow(2)
        fitted = count > 1e-9
        count = torch.where(fitted, count, torch.ones_like(count))
        mean = total / count
        return cls(mean, (square / count - mean.pow(2)).clamp_min(floor), None if fitted.all() else fitted)

    def penalty(self, cos: torch.Tensor, weight: float = WEIGHT) -> torch.Tensor:
        """``(n, classes)``: ``weight`` x the negative log-likelihood (without its constant) of each
        crop's row-phase cosine ``cos`` ``(n,)`` under each class's Gaussian; to be subtracted from
        the logits. A class not fitted gets, for each crop, the least penalty of the fitted ones
        (the cue then neither favours nor rules it out)."""
        penalty = weight * 0.5 * ((cos[:, None] - self.mean[None]).pow(2) / self.var[None] + self.var.log()[None])
        if self.fitted is not None:
            least = penalty[:, self.fitted].min(dim=1).values if self.fitted.any() else torch.zeros(len(penalty))
            penalty[:, ~self.fitted] = least[:, None]
        return penalty
