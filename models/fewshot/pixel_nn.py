"""The floor: 1-nearest-neighbour on the bare pixels (Euclidean distance), nothing learnt."""
from __future__ import annotations

import torch

from .base import FewShotMethod


class PixelNN(FewShotMethod):
    name = "pixel_nn"
    trained_by = "none"

    def __init__(self):
        super().__init__()
        self.support: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        self.support, self.labels = support.flatten(1), labels

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Minus the distance to the nearest support crop of each class, ``(m, way)``."""
        if self.support is None:
            raise RuntimeError("fit() the support set first")
        d = torch.cdist(query.flatten(1), self.support)
        way = int(self.labels.max()) + 1
        return torch.stack([-d[:, self.labels == k].min(dim=1).values for k in range(way)], dim=1)
