"""Prototypical network (Snell et al. 2017): a class is the mean embedding of its support crops,
and a query belongs to the nearest prototype in squared Euclidean distance.

``metric="cosine"`` L2-normalises every embedding first (prototypes are the normalised means), so
the squared distance is 2 − 2·cos ∈ [0, 4], scaled by ``temperature`` in the scores: the metric of
the matching network, with prototypes. The shipped classifier uses it (see docs/fewshot.md).
With ``learn_temperature`` the temperature is a trained parameter (stored as its logarithm).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .method import FewShotMethod, class_means

METRICS = ("euclidean", "cosine")


class ProtoNet(FewShotMethod):
    name = "proto"

    def __init__(self, backbone: nn.Module, metric: str = "euclidean", temperature: float = 10.0,
                 learn_temperature: bool = False):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        self.backbone = backbone
        self.metric = metric
        self._temperature = temperature if metric == "cosine" else 1.0
        # a parameter only when learnt, so that the checkpoints of fixed-temperature nets load unchanged
        self.log_temperature = nn.Parameter(torch.tensor(math.log(self._temperature))) if learn_temperature else None
        self.prototypes: torch.Tensor | None = None

    @property
    def temperature(self) -> float:
        """The scale of the distances in the scores (a plain number)."""
        return float(self.log_temperature.detach().exp()) if self.log_temperature is not None else self._temperature

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(n, features)`` (unit length for the cosine metric)."""
        f = self.backbone(x)
        return F.normalize(f, dim=1) if self.metric == "cosine" else f

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        protos = class_means(self.embed(support), labels)
        self.prototypes = F.normalize(protos, dim=1) if self.metric == "cosine" else protos

    def distances(self, query: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distance ``(m, way)`` of each query embedding to each prototype."""
        if self.prototypes is None:
            raise RuntimeError("fit() the support set first")
        return torch.cdist(self.embed(query), self.prototypes).pow(2)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        t = self.log_temperature.exp() if self.log_temperature is not None else self._temperature
        return -t * self.distances(query)
