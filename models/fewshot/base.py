"""The one interface of every few-shot method: ``fit(support, labels)`` then ``predict(query)``.

Tensors are float32 crops ``(n, C, H, W)`` and int64 labels 0..way-1. A method that learns from
episodes also gives :meth:`FewShotMethod.episode_loss`; one trained as a plain classifier over all
training classes (SimpleShot) says so with ``trained_by = "supervised"``.
"""
from __future__ import annotations

import torch
from torch import nn


class FewShotMethod(nn.Module):
    """Base class: subclasses implement :meth:`fit` and :meth:`scores`."""

    name = "method"
    trained_by = "episodes"  # "episodes" | "supervised" | "none"

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        """Remember what is needed of the support set ``(n, C, H, W)`` with labels ``(n,)``."""
        raise NotImplementedError

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """``(m, way)`` scores, higher meaning more likely, for query crops ``(m, C, H, W)``."""
        raise NotImplementedError

    def predict(self, query: torch.Tensor) -> torch.Tensor:
        """The predicted label ``(m,)`` of each query crop."""
        return self.scores(query).argmax(dim=1)

    def episode_loss(self, support: torch.Tensor, s_labels: torch.Tensor, query: torch.Tensor,
                     q_labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one episode (default: cross-entropy of the scores)."""
        self.fit(support, s_labels)
        return nn.functional.cross_entropy(self.scores(query), q_labels)


def class_means(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean feature of each class 0..max(labels): ``(way, ...)`` from ``(n, ...)``."""
    way = int(labels.max()) + 1
    return torch.stack([features[labels == k].mean(dim=0) for k in range(way)])
