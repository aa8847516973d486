"""The method's protocol: mean accuracy and 95 % confidence interval over N-way K-shot episodes."""
from __future__ import annotations

import numpy as np
import torch

from collections.abc import Iterable

from .crops import CropSet
from .episodes import Episode, sample_episode
from .base import FewShotMethod
from .stats import mean_ci95


@torch.no_grad()
def episode_accuracies(method: FewShotMethod, episodes: Iterable[Episode]) -> list[float]:
    """The share of queries ``method`` labels right in each episode (fitted on its support set)."""
    method.eval()
    accuracies = []
    for ep in episodes:
        method.fit(torch.from_numpy(ep.support), torch.from_numpy(ep.support_labels))
        predicted = method.predict(torch.from_numpy(ep.query)).numpy()
        accuracies.append(float((predicted == ep.query_labels).mean()))
    return accuracies


@torch.no_grad()
def evaluate(method: FewShotMethod, crop_set: CropSet, way: int = 4, shot: int = 1, query: int = 15,
             episodes: int = 100, seed: int = 0) -> dict:
    """Accuracy of ``method`` over ``episodes`` episodes of ``crop_set`` (drawn with ``seed``).

    Each episode fits the method on its support set and predicts its queries; ``query`` is capped
    so that every class of the surface with ``shot + 1`` crops can take part. Returns a dict with
    ``accuracy`` and ``ci95`` (fractions: mean and half-width of the 95 % interval), the protocol
    (``way``, ``shot``, ``query``, ``episodes``, ``seed``) and ``surface``.
    """
    rng = np.random.default_rng(seed)
    query = min(query, max(sorted(len(x) for x in crop_set.crops.values())[-way] - shot, 1))
    accuracies = episode_accuracies(method, (sample_episode(crop_set, way, shot, query, rng) for _ in range(episodes)))
    accuracy, ci95 = mean_ci95(accuracies)
    return {"surface": crop_set.surface, "way": way, "shot": shot, "query": query, "episodes": episodes,
            "seed": seed, "accuracy": accuracy, "ci95": ci95}
