"""SimpleShot (Wang et al. 2019): a backbone trained as a plain classifier over all training
classes; a query belongs to the nearest class centroid of centred (minus the mean training
feature), L2-normalised features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FewShotMethod, class_means


class SimpleShot(FewShotMethod):
    name = "simpleshot"
    trained_by = "supervised"

    def __init__(self, backbone: nn.Module, features: int):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("feature_mean", torch.zeros(features))  # set after training
        self.centroids: torch.Tensor | None = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x) - self.feature_mean, dim=1)

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        self.centroids = class_means(self.embed(support), labels)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        if self.centroids is None:
            raise RuntimeError("fit() the support set first")
        return -torch.cdist(self.embed(query), self.centroids)
