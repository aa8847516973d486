"""The six rows of the method's tables, by name: ``build_method("proto", "conv4")`` etc."""
from __future__ import annotations

from .backbones import build_backbone
from .matching import MatchingNet
from .base import FewShotMethod
from .pixel_nn import PixelNN
from .proto import ProtoNet
from .relation import RelationNet
from .simpleshot import SimpleShot

METHODS = ("proto", "matching", "relation", "simpleshot", "pixel_nn")
# the rows of the method's tables: (row title, method, backbone)
ROWS = (
    ("Prototypical", "proto", "conv4"),
    ("Matching", "matching", "conv4"),
    ("Relation", "relation", "conv4"),
    ("SimpleShot (conv4)", "simpleshot", "conv4"),
    ("SimpleShot (ResNet18)", "simpleshot", "resnet18"),
    ("1-NN on bare pixels", "pixel_nn", "none"),
)
FEATURES = {"conv4": 256, "resnet18": 512}  # embedding size for (2, 32, 32) crops


def build_method(method: str, backbone: str = "conv4", metric: str = "euclidean",
                 learn_temperature: bool = False) -> FewShotMethod:
    """A fresh (untrained) method; ``backbone`` is ignored by relation (its own conv4) and pixel_nn,
    ``metric`` (euclidean | cosine) and ``learn_temperature`` are the prototypical network's."""
    if method == "proto":
        return ProtoNet(build_backbone(backbone), metric, learn_temperature=learn_temperature)
    if method == "matching":
        return MatchingNet(build_backbone(backbone))
    if method == "relation":
        return RelationNet()
    if method == "simpleshot":
        return SimpleShot(build_backbone(backbone), FEATURES[backbone])
    if method == "pixel_nn":
        return PixelNN()
    raise KeyError(f"unknown method {method!r}; known: {METHODS}")
