"""Relation network (Sung et al. 2018): a learnt module scores each (query, class) pair of feature
maps between 0 and 1, trained with a squared error against 1 for the right class, 0 otherwise."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Conv4, conv_block
from .base import FewShotMethod


class RelationNet(FewShotMethod):
    name = "relation"

    def __init__(self, backbone: nn.Module | None = None, width: int = 64, hidden: int = 8):
        """For 32 px crops: 8×8 feature maps, and 2×2 after the relation module's two pools."""
        super().__init__()
        # a conv4 that keeps 8×8 feature maps (two pooling blocks of four) for 32 px crops
        self.backbone = backbone if backbone is not None else Conv4(width=width, pools=2, flatten=False)
        self.relation = nn.Sequential(conv_block(2 * width, width), conv_block(width, width), nn.Flatten(),
                                      nn.Linear(width * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        self.class_maps: torch.Tensor | None = None

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> None:
        maps = self.backbone(support)
        way = int(labels.max()) + 1
        self.class_maps = torch.stack([maps[labels == k].sum(dim=0) for k in range(way)])  # summed over shots

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Relation scores ``(m, way)`` in (0, 1)."""
        if self.class_maps is None:
            raise RuntimeError("fit() the support set first")
        q = self.backbone(query)
        m, way = len(q), len(self.class_maps)
        pairs = torch.cat([self.class_maps.unsqueeze(0).expand(m, -1, -1, -1, -1),
                           q.unsqueeze(1).expand(-1, way, -1, -1, -1)], dim=2)
        return torch.sigmoid(self.relation(pairs.flatten(0, 1))).view(m, way)

    def episode_loss(self, support, s_labels, query, q_labels):
        self.fit(support, s_labels)
        s = self.scores(query)
        return F.mse_loss(s, F.one_hot(q_labels, s.shape[1]).float())
