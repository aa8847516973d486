"""Transductive prototype refinement: prototypes that move towards the lab's own defect crops.

A one-shot prototype is a single crop's embedding; on another microscope it sits off the centre
of its class. Given a pool of unlabelled crops from that microscope (``stmwatch adapt`` stores
them in the bundle), each refinement step assigns every pool crop softly to the prototypes (the
network's own softmax of minus the scaled squared distances) and moves each prototype to the
weighted mean of its support crops and the pool crops it attracts (the soft k-means of Ren et al.
2018, "Meta-learning for semi-supervised few-shot classification"). The support crops keep their
labels; nothing is trained.
"""
from __future__ import annotations

import numpy as np
import torch

from .crops import CropSet


class TransductiveClassifier:
    """Wraps a :class:`~.classifier.PrototypicalClassifier` ``base``: whenever the support set is
    set, its prototypes are refined on ``pool`` ``(n, C, H, W)`` crops over ``steps`` soft k-means
    steps; everything else is the base classifier's."""

    def __init__(self, base, pool: np.ndarray | None, steps: int = 3):
        self.base = base
        self.pool = None if pool is None or len(pool) == 0 else np.asarray(pool, dtype=np.float32)
        self.steps = int(steps)
        self.name = f"{base.name}-transductive"
        self.refine()

    def __getattr__(self, name):  # labels, net, version, unknown_distance, distances ...
        return getattr(self.__dict__["base"], name)

    def classify(self, crops: np.ndarray) -> list[tuple[str, float]]:
        return self.base.classify(crops)

    def set_support(self, support: CropSet) -> None:
        self.base.set_support(support)
        self.refine(support)

    @torch.no_grad()
    def refine(self, support: CropSet | None = None) -> None:
        """Move the base's prototypes (fitted on ``support``, or on the support it holds)."""
        if self.pool is None or self.steps <= 0:
            return
        net = self.base.net
        support = support or self.base.support
        labels = self.base.labels
        x = np.concatenate([support.crops[k] for k in labels])
        y = np.concatenate([np.full(len(support.crops[k]), i) for i, k in enumerate(labels)])
        s_emb = net.embed(torch.from_numpy(self.base.model_input(x)))
        p_emb = torch.cat([net.embed(torch.from_numpy(self.base.model_input(self.pool[i:i + 512])))
                           for i in range(0, len(self.pool), 512)])
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(y).long(), len(labels)).float()
        protos = net.prototypes
        for _ in range(self.steps):
            w = torch.softmax(-net.temperature * torch.cdist(p_emb, protos).pow(2), dim=1)  # (pool, way)
            protos = (one_hot.T @ s_emb + w.T @ p_emb) / (one_hot.sum(0) + w.sum(0)).unsqueeze(1)
            if net.metric == "cosine":
                protos = torch.nn.functional.normalize(protos, dim=1)
        net.prototypes = protos
