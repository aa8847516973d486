"""The contrast cue of the few-shot classifier (models/fewshot/contrast.py): the core's contrast
against hand-made crops, a class with nothing to fit on, and the transductive classifier that
fits each class's contrast at the scan's polarity only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stmwatch.models.fewshot.classifier import PrototypicalClassifier
from stmwatch.models.fewshot.contrast import core_contrast
from stmwatch.models.fewshot.crops import CropSet
from stmwatch.models.fewshot.proto import ProtoNet
from stmwatch.models.fewshot.site import ClassGaussian
from stmwatch.models.fewshot.transductive import TransductiveClassifier


def plateau(height: float, level: float = 0.0, radius: float = 4.0) -> np.ndarray:
    """A (2, 32, 32) crop at ``level`` with a disc of ``height`` above it, radius ``radius`` px,
    centred on pixel (16, 16) (where ``segment.crops_at`` puts the defect)."""
    yy, xx = np.mgrid[:32, :32] - 16
    image = np.full((32, 32), level, np.float32) + height * (np.hypot(yy, xx) <= radius)
    return np.stack([image, np.zeros_like(image)]).astype(np.float32)


def test_core_contrast_is_the_arcsinh_of_the_core_above_the_ring():
    crops = np.stack([plateau(2.0), plateau(-0.5, level=3.0), plateau(0.0, level=-7.0)])
    assert np.allclose(core_contrast(crops), np.arcsinh([2.0, -0.5, 0.0]), atol=1e-6)
    assert np.array_equal(core_contrast(crops[:, :, 8:24, 8:24]), [0.0, 0.0, 0.0])  # too small for the ring
    assert core_contrast(crops[:0]).shape == (0,)


def test_a_class_with_nothing_to_fit_on_is_neither_favoured_nor_ruled_out():
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # class 2: no click counted
    model = ClassGaussian.fit(one_hot, torch.tensor([1.0, -1.0, 5.0]), floor=0.1)
    assert model.fitted.tolist() == [True, True, False]
    penalty = model.penalty(torch.tensor([0.9, -2.0]), weight=1.0)
    assert torch.allclose(penalty[:, 2], penalty[:, :2].min(dim=1).values)
    assert ClassGaussian.fit(one_hot[:, :2], torch.tensor([1.0, -1.0, 5.0])).fitted is None  # all fitted: as before


class Blind(torch.nn.Module):
    """An 'embedding' that sees the same for every crop (channel 1's first pixels, all zero)."""

    def forward(self, x):
        return x[:, 1, 31, :2]


@pytest.mark.parametrize("maps", [False, True])
def test_contrast_separates_classes_the_embedding_cannot_at_each_polarity(maps):
    """Faint and bright spots look alike to the network. Class a was clicked bright (+2) at +1.5 V
    and dark (-2) at -1.5 V, class b faint (+0.5) at both. A scan's contrast model of a uses the
    click at its own polarity only (steps = 0: the clicks alone), also where polarity maps (here
    the identity) bring the other polarity's clicks into the prototypes: a dark spot is a at
    -1.5 V and b at +1.5 V, a bright one a at +1.5 V."""
    support = CropSet("tio2110", {"a": np.stack([plateau(2.0), plateau(-2.0)]),
                                  "b": np.stack([plateau(0.5), plateau(0.5)])},
                      bias_v={"a": np.array([1.5, -1.5]), "b": np.array([1.5, -1.5])})

    def classifier(weight):
        identity = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        return TransductiveClassifier(PrototypicalClassifier(ProtoNet(Blind()), support, float("inf")), None,
                                      steps=0, row_period_px=None, contrast_weight=weight,
                                      polarity_maps={1: identity, -1: identity} if maps else None)

    query = np.stack([plateau(-1.8), plateau(2.2), plateau(0.4)])
    plain = classifier(0.0)
    assert len({lab for lab, _ in plain.classify(query, -1.5)}) == 1 and plain.name.endswith("transductive")
    cue = classifier(0.5)
    assert cue.name.endswith("-contrast")
    assert [lab for lab, _ in cue.classify(query, -1.5)] == ["a", "b", "b"]
    assert [lab for lab, _ in cue.classify(query, 1.5)][1:] == ["a", "b"]
    assert cue.classify(query[:1], 1.5)[0][0] == "b"  # dark: nearer b's faint +0.5 than a's bright +2


def test_the_pools_crops_at_the_other_polarity_leave_the_contrast_alone():
    """An adapted classifier's pool holds crops of both polarities: a scan's contrast model is the
    same as with a pool of its own polarity's crops alone, and differs at the other polarity."""
    support = CropSet("tio2110", {"a": np.stack([plateau(1.0)]), "b": np.stack([plateau(-1.0)])})
    bright, flat = [plateau(3.0)] * 10, [plateau(0.0)] * 10

    def classifier(pool, bias):
        return TransductiveClassifier(PrototypicalClassifier(ProtoNet(Blind()), support, float("inf")),
                                      np.stack(pool), steps=1, row_period_px=None, contrast_weight=0.5,
                                      pool_bias=np.array(bias, float))

    both = classifier(bright + flat, [1.5] * 10 + [-1.5] * 10)
    query = np.stack([plateau(0.5)])
    embedded, _, contrast = both._features(query)
    for sign, alone in ((-1.5, classifier(flat, [-1.5] * 10)), (1.5, classifier(bright, [1.5] * 10))):
        tone = both._refine(embedded, sign, None, contrast)[2]
        assert torch.allclose(tone.mean, alone._refine(embedded, sign, None, contrast)[2].mean)
    assert not torch.allclose(both._refine(embedded, -1.5, None, contrast)[2].mean,
                              both._refine(embedded, 1.5, None, contrast)[2].mean)


def test_models_contrast_cue_false_turns_it_off(tmp_path):
    """``[models] contrast_cue = false`` in a config file: the daemon's classifier has no contrast
    cue; by default it has the shipped weight."""
    from stmwatch.daemon.config import load_config
    from stmwatch.models.fewshot.contrast import WEIGHT
    from stmwatch.models.load import load_analyser

    path = tmp_path / "config.toml"
    path.write_text('[models]\nbackend = "torch"\ncontrast_cue = false\n')
    off = load_analyser(load_config(path), "tio2110")
    path.write_text('[models]\nbackend = "torch"\n')
    on = load_analyser(load_config(path), "tio2110")
    assert off.classifier.contrast_weight == 0.0 and not off.classifier.name.endswith("-contrast")
    assert on.classifier.contrast_weight == WEIGHT and on.classifier.name.endswith("-contrast")
