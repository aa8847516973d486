"""Matching network (Vinyals et al. 2016), without the full-context embeddings: a query's class
probabilities are the softmax attention over its cosine similarities to every support crop,
summed per class."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FewShotMethod


class MatchingNet(FewShotMethod):
    name = "matching"

    def __init__(self, backbone: nn.Module, temperature: float = 10.0):
        super().__init__()
        self.backbone = backbone
        self.temperature = temperature  # scales cosine similarities before the softmax
        self.support: torch.Tensor | None = None
        self.one_hot: torch.Tensor | None = None

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        self.support = F.normalize(self.backbone(support), dim=1)
        self.one_hot = F.one_hot(labels, int(labels.max()) + 1).float()

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Log class probabilities ``(m, way)``."""
        if self.support is None:
            raise RuntimeError("fit() the support set first")
        attention = torch.softmax(self.temperature * F.normalize(self.backbone(query), dim=1) @ self.support.T, dim=1)
        return torch.log(attention @ self.one_hot + 1e-8)

    def episode_loss(self, support, s_labels, query, q_labels):
        self.fit(support, s_labels)
        return F.nll_loss(self.scores(query), q_labels)
