"""Crop-level augmentation for what an instrument changes (``TrainConfig.instrument_augment``).

Another microscope shows the same defect through another tip, feedback loop and noise. Each crop
``(n, C, H, W)`` (C = forward, backward; rows = scan lines, the fast axis along a row) gets, each
part drawn per crop from ``rng`` (so the same seed gives the same crops):

- a small turn (±``turn_deg``) and scale change (±``scale``) about the centre, and a sub-pixel
  shift: the defect's content moves, the scan lines stay horizontal (the noise below is added
  after, along the rows);
- a blur by an asymmetric tip: an anisotropic Gaussian, sigmas 0-``blur_px`` on its two axes, at a
  random angle;
- feedback lag: a one-sided exponential filter along the fast axis (forward frame left→right,
  backward right→left), 0-``lag_px``;
- a monotone change of contrast (gamma 1/``gamma``..``gamma`` on the crop's own range);
- noise along the scan lines: line offsets (a random walk down the rows), telegraph noise (a
  two-level signal switching at random points along the lines) and white noise.

The crops are normalised again on their own at the end (:func:`~.crops.normalise_crops`): the
classifier sees crops normalised that way.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .crops import normalise_crops


def _aniso_kernels(sig_a: np.ndarray, sig_b: np.ndarray, angle: np.ndarray, size: int = 7) -> np.ndarray:
    """``(n, size, size)`` normalised anisotropic Gaussian kernels."""
    half = size // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / np.maximum(sig_a, 1e-3)[:, None, None]) ** 2
                       + (v / np.maximum(sig_b, 1e-3)[:, None, None]) ** 2))
    return (k / k.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def _lag(x: np.ndarray, tau: float) -> np.ndarray:
    """One-sided exponential filter along the last axis (left → right) of ``x`` ``(H, W)``."""
    if tau <= 0.05:
        return x
    a = np.exp(-1.0 / tau)
    out = np.empty_like(x)
    acc = x[:, 0].copy()
    for j in range(x.shape[1]):
        acc = a * acc + (1 - a) * x[:, j]
        out[:, j] = acc
    return out


def instrument_augment(x: np.ndarray, rng: np.random.Generator, turn_deg: float = 10.0, scale: float = 0.2,
                       shift_px: float = 1.5, blur_px: float = 1.6, lag_px: float = 1.5, gamma: float = 1.5,
                       line_noise: float = 0.3, telegraph: float = 0.4, white: float = 0.3) -> np.ndarray:
    """``x`` ``(n, C, H, W)`` float32 changed as another instrument would show it (module docstring)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    if n == 0:
        return x.copy()
    # geometry: turn, scale and shift of the content
    ang = np.deg2rad(rng.uniform(-turn_deg, turn_deg, n))
    s = rng.uniform(1 - scale, 1 + scale, n)
    shift = rng.uniform(-shift_px, shift_px, (n, 2)) * 2.0 / np.array([w, h])
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = np.cos(ang) / s
    theta[:, 0, 1] = -np.sin(ang) / s
    theta[:, 1, 0] = np.sin(ang) / s
    theta[:, 1, 1] = np.cos(ang) / s
    theta[:, :, 2] = shift
    t = torch.from_numpy(x)
    grid = F.affine_grid(torch.from_numpy(theta), [n, c, h, w], align_corners=False)
    t = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # an asymmetric tip: anisotropic Gaussian blur at a random angle (on 70 % of the crops)
    blurred = rng.random(n) < 0.7
    kernels = _aniso_kernels(rng.uniform(0.0, blur_px, n) * blurred, rng.uniform(0.0, blur_px, n) * blurred,
                             rng.uniform(0, np.pi, n))
    kt = torch.from_numpy(kernels)[:, None].repeat_interleave(c, dim=0)  # (n*c, 1, k, k)
    pad = kernels.shape[-1] // 2
    t = F.conv2d(F.pad(t.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="replicate"), kt, groups=n * c)
    out = t.reshape(n, c, h, w).numpy().copy()
    lags = rng.uniform(0.0, lag_px, n) * (rng.random(n) < 0.5)
    gammas = np.exp(rng.uniform(-np.log(gamma), np.log(gamma), n))
    for i in range(n):
        # feedback lag along the fast axis: forward left -> right, backward right -> left
        out[i, 0] = _lag(out[i, 0], lags[i])
        if c > 1:
            out[i, 1] = _lag(out[i, 1][:, ::-1], lags[i])[:, ::-1]
        # monotone contrast change on the crop's own range
        lo, hi = float(out[i].min()), float(out[i].max())
        if hi - lo > 1e-6:
            out[i] = lo + (hi - lo) * ((out[i] - lo) / (hi - lo)) ** gammas[i]
        # noise along the lines (each frame its own): offsets, telegraph, white
        for ch in range(c):
            walk = np.cumsum(rng.normal(0.0, rng.uniform(0, line_noise) / np.sqrt(h), h))
            tel = np.zeros((h, w), np.float32)
            switches = rng.poisson(rng.uniform(0, 3))
            if switches:
                flat = np.zeros(h * w, np.float32)
                flat[np.sort(rng.integers(0, h * w, switches))] = 1.0
                tel = (np.cumsum(flat) % 2).reshape(h, w) * rng.uniform(0, telegraph)
            out[i, ch] += walk[:, None].astype(np.float32) + tel + rng.normal(0, rng.uniform(0, white), (h, w))
    return normalise_crops(out)
