"""The method's protocol: mean accuracy and 95 % confidence interval over N-way K-shot episodes.

A method that is an embedding and a metric on it (``embed``, ``fit_embedded`` and
``scores_embedded``: the prototypical network) has every crop of the set embedded once, and its
episodes run on those embeddings; the episodes and figures are those of fitting and predicting on
the crops, without embedding the same crop (eight times, with test-time augmentation) in
episode after episode. Any other method is fitted and run on each episode's crops.
"""
from __future__ import annotations

import numpy as np
import torch

from collections.abc import Iterable

from .crops import CropSet
from .episodes import Episode, draw_episode, episode_of
from .base import FewShotMethod
from .stats import mean_ci95

EMBED_BATCH = 256  # crops per forward pass when embedding a whole crop set


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


def embeds_once(method: FewShotMethod) -> bool:
    """Whether ``method`` can fit and score embeddings made beforehand (see the module's doc)."""
    return all(hasattr(method, name) for name in ("embed", "fit_embedded", "scores_embedded"))


@torch.no_grad()
def embedded_accuracies(method: FewShotMethod, crop_set: CropSet, draws: Iterable[dict[str, np.ndarray]],
                        shot: int) -> list[float]:
    """:func:`episode_accuracies` of the episodes of ``draws`` (see :func:`~.episodes.draw_episode`)
    for a method that :func:`embeds_once`: every crop of ``crop_set`` is embedded once, in batches."""
    method.eval()
    features = {c: torch.cat([method.embed(torch.from_numpy(x[i:i + EMBED_BATCH]))
                              for i in range(0, len(x), EMBED_BATCH)]) for c, x in crop_set.crops.items() if len(x)}
    accuracies = []
    for draw in draws:
        labels = np.arange(len(draw))
        query = len(next(iter(draw.values()))) - shot
        method.fit_embedded(torch.cat([features[c][idx[:shot]] for c, idx in draw.items()]),
                            torch.from_numpy(np.repeat(labels, shot)))
        scores = method.scores_embedded(torch.cat([features[c][idx[shot:]] for c, idx in draw.items()]))
        accuracies.append(float((scores.argmax(dim=1).numpy() == np.repeat(labels, query)).mean()))
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
    draws = (draw_episode(crop_set, way, shot, query, rng) for _ in range(episodes))
    if embeds_once(method):
        accuracies = embedded_accuracies(method, crop_set, draws, shot)
    else:
        accuracies = episode_accuracies(method, (episode_of(crop_set, d, shot) for d in draws))
    accuracy, ci95 = mean_ci95(accuracies)
    return {"surface": crop_set.surface, "way": way, "shot": shot, "query": query, "episodes": episodes,
            "seed": seed, "accuracy": accuracy, "ci95": ci95}
