"""Prototypical network (Snell et al. 2017): a class is the mean embedding of its support crops,
and a query belongs to the nearest prototype in squared Euclidean distance."""
from __future__ import annotations

import torch
from torch import nn

from .method import FewShotMethod, class_means


class ProtoNet(FewShotMethod):
    name = "proto"

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.prototypes: torch.Tensor | None = None

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        self.prototypes = class_means(self.backbone(support), labels)

    def distances(self, query: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distance ``(m, way)`` of each query embedding to each prototype."""
        if self.prototypes is None:
            raise RuntimeError("fit() the support set first")
        return torch.cdist(self.backbone(query), self.prototypes).pow(2)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        return -self.distances(query)
