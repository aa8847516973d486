"""Episodic fine-tuning of the embedding on a lab's unlabelled defect crops (``stmwatch adapt``).

No labels: the classes of the episodes are made up from the crops themselves.

- **Pseudo-classes**: the crops' embeddings are clustered (k-means); an episode draws ``way``
  clusters, one crop of each as the support (seen through :func:`~.instrument.instrument_augment`)
  and other crops of the same clusters as queries.
- **Self-supervised views**: every other episode is instance discrimination, each of ``way`` crops
  a class of its own, support and query two different augmented views of it.

The loss is the prototypical network's own (:meth:`ProtoNet.episode_loss`); a small learning rate
and few steps keep the embedding near the trained one. Deterministic for a seed (one thread).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from .crops import normalise_crops
from .instrument import instrument_augment

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PseudoSettings:
    steps: int = 150  # optimiser steps (episodes)
    lr: float = 1e-4
    clusters: int = 12  # k-means clusters of the lab crops (pseudo-classes)
    way: int = 6
    query: int = 4  # query crops per pseudo-class
    min_cluster: int = 5  # smaller clusters are not drawn
    seed: int = 0


def cluster_labels(net, crops: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels ``(n,)`` of the crops' embeddings (``crops`` as the net sees them)."""
    from stmwatch.models.autolabel.kmeans import kmeans

    net.eval()
    with torch.no_grad():
        emb = torch.cat([net.embed(torch.from_numpy(crops[i:i + 512])) for i in range(0, len(crops), 512)]).numpy()
    return kmeans(emb, k, seed=seed)[1]


def finetune_on_lab_crops(net, crops: np.ndarray, settings: PseudoSettings | None = None, progress=None) -> dict:
    """Fine-tune ``net`` (a :class:`~.proto.ProtoNet`) in place on ``crops`` ``(n, C, 32, 32)`` (as the
    net sees them, e.g. normalised per crop); returns a summary (clusters used, mean loss of the
    last steps). Too few crops or clusters: nothing is done."""
    s = settings or PseudoSettings()
    crops = np.ascontiguousarray(crops, dtype=np.float32)
    if len(crops) < s.way * (s.query + 1):
        return {"steps": 0, "reason": f"{len(crops)} crops are too few"}
    labels = cluster_labels(net, crops, s.clusters, s.seed)
    clusters = [np.flatnonzero(labels == j) for j in np.unique(labels)]
    clusters = [c for c in clusters if len(c) >= s.min_cluster]
    rng = np.random.default_rng([s.seed, 31])
    torch.manual_seed(s.seed)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=s.lr)
    net.train()
    for m in net.modules():  # BatchNorm keeps the trained statistics (re-estimating them on scan crops hurts)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    losses = []
    for step in range(s.steps):
        if step % 2 == 0 and len(clusters) >= 2:  # pseudo-classes
            way = min(s.way, len(clusters))
            chosen = rng.choice(len(clusters), way, replace=False)
            sup, qry = [], []
            for j in chosen:
                idx = rng.choice(clusters[j], min(len(clusters[j]), s.query + 1), replace=False)
                sup.append(crops[idx[:1]])
                qry.append(crops[np.resize(idx[1:], s.query)])
            sup = instrument_augment(np.concatenate(sup), rng)
            qry = instrument_augment(np.concatenate(qry), rng)
        else:  # self-supervised views: each crop its own class
            way = s.way
            idx = rng.choice(len(crops), way, replace=False)
            sup = instrument_augment(crops[idx], rng)
            qry = instrument_augment(np.repeat(crops[idx], s.query, axis=0), rng)
        sup, qry = normalise_crops(sup), normalise_crops(qry)
        sl = torch.arange(way)
        ql = torch.arange(way).repeat_interleave(s.query)
        loss = net.episode_loss(torch.from_numpy(sup), sl, torch.from_numpy(qry), ql)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, s.steps)
    net.eval()
    out = {"steps": s.steps, "clusters": len(clusters), "final_loss": round(float(np.mean(losses[-20:])), 4)}
    log.info("embedding fine-tuned on %d lab crops: %s", len(crops), out)
    return out
