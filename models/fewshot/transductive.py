"""Transductive prototype refinement: prototypes that move towards the defects being labelled.

A one-shot prototype is a single crop's embedding; on another microscope, or with an atypical
click, it sits off the centre of its class. Each call to :meth:`TransductiveClassifier.classify`
therefore first refines the prototypes on the unlabelled crops at hand: the crops of that call
(one scan's defects) and, for an adapted classifier (``stmwatch adapt`` stores them in the
bundle), a pool of the lab's own defect crops. A refinement step assigns every unlabelled crop
softly to the prototypes (the network's own softmax of minus the scaled squared distances) and
moves each prototype to the weighted mean of its support crops and the crops it attracts (the
soft k-means of Ren et al. 2018, "Meta-learning for semi-supervised few-shot classification").
The support crops keep their labels, nothing is trained, and every call starts again from the
support set's own prototypes, so one scan's labels never depend on the scans before it.

One step, on the scan's crops and the pool, was chosen on training-style scans
(docs/adapt.md, "Transduction on the scan's own defects").

**Polarity.** Many defects look different in filled states (negative sample bias) and empty
states (positive). When the call says the scan's bias, a class's prototype is made from its
clicks at that polarity (and those of unknown bias); a class with no click there keeps all its
clicks. A scan of unknown bias, or a support set without bias records, uses every click. The pool
is used whole: cutting it to the scan's polarity was lower on training-style scans (docs/adapt.md,
"Clicks at each polarity").
"""
from __future__ import annotations

import numpy as np
import torch

from .crops import CropSet, bias_polarity

STEPS = 1  # soft k-means steps per call (docs/adapt.md)


class TransductiveClassifier:
    """Wraps a :class:`~.classifier.PrototypicalClassifier` ``base``: each :meth:`classify` (and
    :meth:`distances`) refines the support set's prototypes over ``steps`` soft k-means steps on
    that call's crops together with ``pool`` ``(n, C, H, W)`` (the lab's crops, or None);
    everything else is the base classifier's."""

    def __init__(self, base, pool: np.ndarray | None = None, steps: int = STEPS):
        self.base = base
        self.pool = None if pool is None or len(pool) == 0 else np.asarray(pool, dtype=np.float32)
        self.steps = int(steps)
        self.name = f"{base.name}-transductive"
        self._pool_embedding = self._embed(self.pool) if self.pool is not None else None
        self._fit_support()

    def __getattr__(self, name):  # labels, net, version, unknown_distance, support ...
        return getattr(self.__dict__["base"], name)

    @torch.no_grad()
    def _embed(self, crops: np.ndarray) -> torch.Tensor:
        net, x = self.base.net, self.base.model_input(crops)
        return torch.cat([net.embed(torch.from_numpy(x[i:i + 512])) for i in range(0, len(x), 512)])

    def _fit_support(self) -> None:
        support, labels = self.base.support, self.base.labels
        x = np.concatenate([support.crops[k] for k in labels])
        y = np.concatenate([np.full(len(support.crops[k]), i) for i, k in enumerate(labels)])
        self._support_embedding = self._embed(x)
        self._one_hot = torch.nn.functional.one_hot(torch.from_numpy(y).long(), len(labels)).float()
        self._support_prototypes = self.base.net.prototypes
        self._support_polarity = np.concatenate([support.polarity(k) for k in labels])

    def _start(self, bias_v: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support embeddings, their one-hot labels and the prototypes to use for a scan of sample
        bias ``bias_v`` (V; None: unknown): see "Polarity" above."""
        sign = bias_polarity(bias_v)
        if sign == 0:
            return self._support_embedding, self._one_hot, self._support_prototypes
        keep = (self._support_polarity == 0) | (self._support_polarity == sign)
        owner = self._one_hot.argmax(1).numpy()
        for k in range(self._one_hot.shape[1]):
            if not keep[owner == k].any():
                keep[owner == k] = True  # no click of this class at this polarity: all of them
        if keep.all():
            return self._support_embedding, self._one_hot, self._support_prototypes
        mask = torch.from_numpy(keep)
        embedding, one_hot = self._support_embedding[mask], self._one_hot[mask]
        protos = (one_hot.T @ embedding) / one_hot.sum(0).unsqueeze(1)
        if self.base.net.metric == "cosine":
            protos = torch.nn.functional.normalize(protos, dim=1)
        return embedding, one_hot, protos

    def set_support(self, support: CropSet) -> None:
        self.base.set_support(support)
        self._fit_support()

    @torch.no_grad()
    def _refine(self, embedded: torch.Tensor | None, bias_v: float | None = None) -> torch.Tensor:
        support, one_hot, protos = self._start(bias_v)
        parts = [p for p in (self._pool_embedding, embedded) if p is not None and len(p)]
        if not parts or self.steps <= 0:
            return protos
        net, unlabelled = self.base.net, torch.cat(parts)
        for _ in range(self.steps):
            w = torch.softmax(-net.temperature * torch.cdist(unlabelled, protos).pow(2), dim=1)  # (n, way)
            protos = (one_hot.T @ support + w.T @ unlabelled) / (one_hot.sum(0) + w.sum(0)).unsqueeze(1)
            if net.metric == "cosine":
                protos = torch.nn.functional.normalize(protos, dim=1)
        return protos

    def refined_prototypes(self, crops: np.ndarray, bias_v: float | None = None) -> torch.Tensor:
        """The prototypes after :attr:`steps` soft k-means steps on ``crops`` and the pool, for a
        scan of sample bias ``bias_v`` (V; None: unknown)."""
        return self._refine(self._embed(crops) if len(crops) else None, bias_v)

    def distances(self, crops: np.ndarray, bias_v: float | None = None) -> np.ndarray:
        """Squared distances ``(n, classes)`` of ``crops`` (of one scan, of sample bias ``bias_v``)
        to the prototypes refined on them (one forward pass)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.base.labels)), dtype=np.float32)
        embedded = self._embed(crops)
        return torch.cdist(embedded, self._refine(embedded, bias_v)).pow(2).numpy()

    def classify(self, crops: np.ndarray, bias_v: float | None = None) -> list[tuple[str, float]]:
        if len(crops) == 0:
            return []
        return self.base.label(crops, self.distances(crops, bias_v))
