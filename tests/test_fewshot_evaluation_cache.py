"""The evaluation's embedding cache: a prototypical network's crops are embedded once for all
episodes, and the episodes and accuracies are exactly those of fitting on each episode's crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stmwatch.models.fewshot.backbones import Conv4
from stmwatch.models.fewshot.episodes import draw_episode, sample_episode
from stmwatch.models.fewshot.evaluation import embedded_accuracies, embeds_once, episode_accuracies, evaluate
from stmwatch.models.fewshot.proto import ProtoNet
from stmwatch.models.fewshot.registry import build_method
from stmwatch.models.fewshot.stats import mean_ci95
from stmwatch.models.fewshot.synthetic import SHAPES, shape_set

EPISODES, SEED = 20, 5


def tiny_net(metric: str) -> ProtoNet:
    """An untrained narrow conv4 prototypical net with all eight turns and mirrors at test time."""
    torch.manual_seed(0)
    return ProtoNet(Conv4(width=8), metric, tta="d8").eval()


def reference(method, crops, way, shot, query) -> list[float]:
    """Per-episode accuracies the plain way: every episode's crops through fit and predict."""
    rng = np.random.default_rng(SEED)
    return episode_accuracies(method, [sample_episode(crops, way, shot, query, rng) for _ in range(EPISODES)])


@pytest.mark.parametrize("metric, shot", [("cosine", 1), ("euclidean", 2)])
def test_cached_embeddings_give_the_episodes_and_accuracies_of_the_crops(metric, shot):
    crops = shape_set(SHAPES, per_class=8, seed=3, noise=1.0)  # noisy: the untrained net errs, unevenly
    net, way, query = tiny_net(metric), 4, 5
    expected = reference(net, crops, way, shot, query)
    assert len(set(expected)) > 2  # accuracies vary from episode to episode, so a wrong episode shows

    rng = np.random.default_rng(SEED)
    draws = [draw_episode(crops, way, shot, query, rng) for _ in range(EPISODES)]
    np.testing.assert_allclose(embedded_accuracies(net, crops, draws, shot), expected, atol=1e-9)
    other = np.random.default_rng(SEED + 1)  # other episodes: the comparison above can tell
    draws = [draw_episode(crops, way, shot, query, other) for _ in range(EPISODES)]
    assert not np.allclose(embedded_accuracies(net, crops, draws, shot), expected)

    embedded = []  # evaluate takes the cached path: each of the 48 crops embedded once
    original = net.embed
    net.embed = lambda x: embedded.append(len(x)) or original(x)
    result = evaluate(net, crops, way=way, shot=shot, query=query, episodes=EPISODES, seed=SEED)
    assert embeds_once(net) and sum(embedded) == len(SHAPES) * 8
    assert (result["accuracy"], result["ci95"]) == pytest.approx(mean_ci95(expected), abs=1e-9)


def test_a_method_without_the_cache_is_fitted_on_each_episode():
    crops = shape_set(SHAPES, per_class=8, seed=3, noise=1.0)
    method = build_method("pixel_nn")
    assert not embeds_once(method)
    result = evaluate(method, crops, way=4, shot=1, query=5, episodes=EPISODES, seed=SEED)
    assert (result["accuracy"], result["ci95"]) == pytest.approx(mean_ci95(reference(method, crops, 4, 1, 5)))
