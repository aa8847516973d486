"""k-means on per-pixel feature vectors, in torch.

Why our own (about 40 lines) rather than a library: scikit-learn is not a dependency of stmwatch
and would be one only for this; torch already is, and a few Lloyd iterations on ``(N, D)`` float32
tensors are matrix products that torch runs multi-threaded (and on a GPU when the features are
there). k-means++ seeding (Arthur & Vassilvitskii 2007) and several restarts keep the result
stable; the fit uses a random subsample of the pixels and every pixel is then assigned to the
nearest centre, which is what makes a 1000² image cost well under a second.
"""
from __future__ import annotations

import numpy as np
import torch


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centre for each row of ``x``."""
    d2 = (x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]
    d2, idx = d2.min(dim=1)
    return idx, d2.clamp_min(0)


def _plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability ∝ squared distance to the chosen."""
    centres = [x[torch.randint(len(x), (1,), generator=gen)]]
    for _ in range(1, k):
        _, d2 = _nearest(x, torch.cat(centres))
        if float(d2.sum()) <= 0:  # fewer distinct points than k: repeat one
            centres.append(centres[-1])
            continue
        centres.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=gen)])
    return torch.cat(centres)


def kmeans(x: np.ndarray, k: int, *, iterations: int = 30, restarts: int = 3, sample: int = 40_000,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the rows of ``x`` ``(N, D)`` into ``k`` groups → ``(centres (k, D), labels (N,))``.

    Fits on at most ``sample`` rows drawn at random (all when fewer), ``restarts`` k-means++
    starts of at most ``iterations`` Lloyd steps each, keeps the lowest within-cluster sum of
    squares, then labels every row by its nearest centre. An empty cluster is re-seeded at the
    point farthest from its centre. Deterministic for a given ``seed``.
    """
    data = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    if data.ndim != 2 or len(data) == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) array, not shape {tuple(data.shape)}")
    k = int(min(k, len(data)))
    gen = torch.Generator().manual_seed(int(seed))
    fit = data if len(data) <= sample else data[torch.randperm(len(data), generator=gen)[:sample]]
    best, best_inertia = None, float("inf")
    for _ in range(max(1, restarts)):
        centres = _plus_plus(fit, k, gen)
        for _ in range(iterations):
            idx, d2 = _nearest(fit, centres)
            counts = torch.bincount(idx, minlength=k).float()
            sums = torch.zeros_like(centres).index_add_(0, idx, fit)
            new = sums / counts.clamp_min(1)[:, None]
            empty = counts == 0
            if empty.any():  # re-seed at the points worst served
                far = torch.topk(d2, int(empty.sum())).indices
                new[empty] = fit[far]
            if torch.allclose(new, centres, atol=1e-6):
                centres = new
                break
            centres = new
        inertia = float(_nearest(fit, centres)[1].sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    labels = torch.cat([_nearest(chunk, best)[0] for chunk in torch.split(data, 262_144)])
    return best.numpy(), labels.numpy().astype(np.int64)


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Label of the nearest of ``centres`` ``(k, D)`` for each row of ``x`` ``(N, D)``."""
    data = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    c = torch.as_tensor(np.ascontiguousarray(centres, dtype=np.float32))
    return torch.cat([_nearest(chunk, c)[0] for chunk in torch.split(data, 262_144)]).numpy().astype(np.int64)
