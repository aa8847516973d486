"""Prototypical network (Snell et al. 2017): a class is the mean embedding of its support crops,
and a query belongs to the nearest prototype in squared Euclidean distance.

``metric="cosine"`` L2-normalises every embedding first (prototypes are the normalised means), so
the squared distance is 2 − 2·cos ∈ [0, 4], scaled by ``temperature`` in the scores: the metric of
the matching network, with prototypes. The shipped classifier uses it (see docs/fewshot.md).
With ``learn_temperature`` the temperature is a trained parameter (stored as its logarithm).

``tta`` (test-time augmentation) makes a crop's embedding the mean of the embeddings of some of
its mirror images and turns (each L2-normalised first for the cosine metric; the mean normalised
again): ``"none"``, ``"flips"`` (identity, left-right, up-down, both: scan lines stay horizontal)
or ``"d8"`` (all eight turns and mirrors of the square; on (001) surfaces the dimer rows turn by
90° at every step, so a turned defect is the same class). It applies to support and query crops
alike, in training too if set then (it is a setting, not a weight: off unless asked for).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import FewShotMethod, class_means

METRICS = ("euclidean", "cosine")


def _flip_lr(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _flip_ud(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def _flip_both(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2, -1)


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


def _rot90(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 1, (-2, -1))


def _rot270(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 3, (-2, -1))


def _antitranspose(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2, -1).transpose(-2, -1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# the transforms of each test-time augmentation, identity first
TTA = {
    "none": (_identity,),
    "flips": (_identity, _flip_lr, _flip_ud, _flip_both),
    "d8": (_identity, _flip_lr, _flip_ud, _flip_both, _transpose, _rot90, _rot270, _antitranspose),
}


class ProtoNet(FewShotMethod):
    name = "proto"

    def __init__(self, backbone: nn.Module, metric: str = "euclidean", temperature: float = 10.0,
                 learn_temperature: bool = False, tta: str = "none"):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        self.tta = tta  # (checked by the property)
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

    @property
    def tta(self) -> str:
        """The test-time augmentation: a key of :data:`TTA`."""
        return self._tta

    @tta.setter
    def tta(self, value: str) -> None:
        if value not in TTA:
            raise ValueError(f"tta must be one of {tuple(TTA)}, not {value!r}")
        self._tta = value

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(n, features)`` (unit length for the cosine metric); with ``tta`` the mean over
        the transforms of the crops (one batched forward pass)."""
        transforms = TTA[self.tta]
        if len(transforms) == 1:
            f = self.backbone(x)
            return F.normalize(f, dim=1) if self.metric == "cosine" else f
        f = self.backbone(torch.cat([t(x) for t in transforms])).unflatten(0, (len(transforms), x.shape[0]))
        if self.metric == "cosine":
            return F.normalize(F.normalize(f, dim=2).mean(dim=0), dim=1)
        return f.mean(dim=0)

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        self.fit_embedded(self.embed(support), labels)

    def fit_embedded(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """:meth:`fit` on support embeddings already made by :meth:`embed` (an evaluation embeds
        each crop once for all its episodes)."""
        protos = class_means(features, labels)
        self.prototypes = F.normalize(protos, dim=1) if self.metric == "cosine" else protos

    def distances(self, query: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distance ``(m, way)`` of each query embedding to each prototype."""
        return self.distances_embedded(self.embed(query))

    def distances_embedded(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`distances` of query embeddings already made by :meth:`embed`."""
        if self.prototypes is None:
            raise RuntimeError("fit() the support set first")
        return torch.cdist(features, self.prototypes).pow(2)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        return self.scores_embedded(self.embed(query))

    def scores_embedded(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` of query embeddings already made by :meth:`embed`."""
        t = self.log_temperature.exp() if self.log_temperature is not None else self._temperature
        return -t * self.distances_embedded(features)


class ProtoEnsemble(FewShotMethod):
    """Several trained prototypical networks as one: each fits its own prototypes, and the distance
    of a query to a class is the mean of their squared distances (for cosine nets: the squared
    distance between the nets' unit embeddings placed side by side, divided by their number, with
    each net's prototype normalised on its own). Scores use the mean temperature."""

    name = "proto"

    def __init__(self, nets: list[ProtoNet]):
        super().__init__()
        if not nets:
            raise ValueError("an ensemble needs at least one network")
        if len({net.metric for net in nets}) > 1:
            raise ValueError("an ensemble's networks must share one metric")
        self.nets = nn.ModuleList(nets)

    @property
    def tta(self) -> str:
        return self.nets[0].tta

    @tta.setter
    def tta(self, value: str) -> None:
        for net in self.nets:
            net.tta = value

    @property
    def temperature(self) -> float:
        return sum(net.temperature for net in self.nets) / len(self.nets)

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        for net in self.nets:
            net.fit(support, labels)

    def distances(self, query: torch.Tensor) -> torch.Tensor:
        return torch.stack([net.distances(query) for net in self.nets]).mean(dim=0)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        return -self.temperature * self.distances(query)
