"""The lattice-site cue of the few-shot classifier (models/fewshot/site.py): the row phase at a
crop's centre against hand-made gratings, the per-class Gaussian against hand-computed figures,
and the transductive classifier that uses it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stmwatch.models.fewshot.classifier import PrototypicalClassifier
from stmwatch.models.fewshot.crops import CropSet
from stmwatch.models.fewshot.proto import ProtoNet
from stmwatch.models.fewshot.site import ClassGaussian, row_phase_cos
from stmwatch.models.fewshot.transductive import TransductiveClassifier

PERIOD = 6.5  # px: TiO2(110)'s rows at 0.1 nm/px


def grating(phase: float, angle_deg: float, period: float = PERIOD, core: float = 0.0) -> np.ndarray:
    """A (2, 32, 32) crop of rows cos(k·r + phase), r from the crop's centre (pixel (16, 16), where
    ``segment.crops_at`` puts the defect), k at ``angle_deg`` from the x axis; ``core``: a bright
    blob at the centre."""
    yy, xx = np.mgrid[:32, :32] - 16
    a = np.deg2rad(angle_deg)
    image = np.cos(2 * np.pi / period * (np.cos(a) * xx + np.sin(a) * yy) + phase)
    image += core * np.exp(-(xx ** 2 + yy ** 2) / (2 * 2.0 ** 2))
    return np.stack([image, image]).astype(np.float32)


@pytest.mark.parametrize("angle", [0.0, 33.0, 90.0, 151.0])
def test_row_phase_is_the_cosine_of_the_rows_phase_at_the_centre(angle):
    crops = np.stack([grating(p, angle) for p in (0.0, np.pi, np.pi / 2, np.pi / 3)])
    assert np.allclose(row_phase_cos(crops, PERIOD), [1.0, -1.0, 0.0, 0.5], atol=0.05)


def test_row_phase_ignores_the_defect_at_the_centre_and_a_period_a_little_off():
    # a defect 50x the rows' amplitude: it would decide the phase if the core were not left out
    crops = np.stack([grating(np.pi, 20.0, core=50.0), grating(0.0, 70.0, period=PERIOD * 1.1, core=-50.0)])
    assert np.allclose(row_phase_cos(crops, PERIOD), [-1.0, 1.0], atol=0.1)
    assert row_phase_cos(crops[:0], PERIOD).shape == (0,)


def test_row_phase_is_zero_without_site_information():
    crops = np.stack([grating(0.0, 20.0), grating(0.0, 20.0)])
    crops[1] = 0.0  # a flat crop
    assert np.allclose(row_phase_cos(crops, PERIOD), [1.0, 0.0], atol=0.05)
    assert np.array_equal(row_phase_cos(crops[:, :, 8:24, 8:24], PERIOD), [0.0, 0.0])  # too small for the ring


def test_the_crops_centre_is_where_the_segmenter_cuts_a_defect():
    """Rows along y with a crest at image column 40: crops cut by ``segment.crops_at`` at columns
    40, 42 and 43 read the rows' cosine there (+1, -0.35, -0.97; half a pixel off, the crest
    would read 0.88)."""
    from stmwatch.models.segment import crops_at

    xx = np.arange(96)[None, :].repeat(96, axis=0)
    image = np.cos(2 * np.pi * (xx - 40) / PERIOD)[None].repeat(2, axis=0).astype(np.float32)
    cols = np.array([40.0, 42.0, 43.0])
    crops = crops_at(image, np.full(3, 48), cols, 32)
    assert np.allclose(row_phase_cos(crops, PERIOD), np.cos(2 * np.pi * (cols - 40) / PERIOD), atol=0.03)


def test_site_model_fits_clicks_and_weighted_crops():
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    clicks = torch.tensor([1.0, -1.0])
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    phase = torch.tensor([0.0, 1.0, 1.0])
    site = ClassGaussian.fit(one_hot, clicks, weights, phase, floor=0.01)
    # class 0: values 1, 0 (weight 1), 1 (weight 0.5): mean 1.5/2.5 = 0.6, mean square 1.5/2.5 → var 0.24
    # class 1: values -1, 1 (0.5), 1 (1): mean 0.5/2.5 = 0.2, mean square 2.5/2.5 → var 0.96
    assert np.allclose(site.mean.numpy(), [0.6, 0.2]) and np.allclose(site.var.numpy(), [0.24, 0.96])
    assert np.allclose(ClassGaussian.fit(one_hot, clicks).var.numpy(), [0.2, 0.2])  # one click each: the floor
    penalty = site.penalty(torch.tensor([0.6]), weight=1.0).numpy()
    assert np.allclose(penalty, [[0.5 * np.log(0.24), 0.5 * (0.16 / 0.96 + np.log(0.96))]], atol=1e-6)


class FirstPixels(torch.nn.Module):
    """An 'embedding' of the crop's two pixels at (31, 0) and (31, 1) of channel 1 (out of the
    ring's way on channel 0, which carries the rows)."""

    def forward(self, x):
        return x[:, 1, 31, :2]


def test_the_site_separates_classes_the_embedding_cannot():
    """Two classes that look the same to the network: a sits on the rows' crests, b in their
    troughs, one click each. The pool holds both, in equal numbers. Without the site both queries
    get one class; with it each query goes to the class of its site."""
    def crop(phase, look):
        c = grating(phase, 40.0)
        c[1, 31, :2] = look
        return c
    rng = np.random.default_rng(0)
    support = CropSet("tio2110", {"a": np.stack([crop(0.0, [0.0, 1.0])]), "b": np.stack([crop(np.pi, [0.0, 0.9])])})
    pool = np.stack([crop(p, [0.0, 1.0 + 0.05 * rng.normal()]) for p in rng.normal(0.0, 0.3, 20)]
                    + [crop(np.pi + p, [0.0, 1.0 + 0.05 * rng.normal()]) for p in rng.normal(0.0, 0.3, 20)])
    query = np.stack([crop(0.2, [0.0, 0.95]), crop(np.pi - 0.2, [0.0, 0.97])])
    net = ProtoNet(FirstPixels())
    plain = TransductiveClassifier(PrototypicalClassifier(net, support, float("inf")), pool, row_period_px=None)
    assert len({lab for lab, _ in plain.classify(query)}) == 1
    site = TransductiveClassifier(PrototypicalClassifier(net, support, float("inf")), pool, row_period_px=PERIOD)
    assert [lab for lab, _ in site.classify(query)] == ["a", "b"]
    d = site.distances(query)
    assert np.allclose(d.min(axis=1), torch.cdist(site._features(query)[0], site.refined_prototypes(query)).pow(2)
                       .numpy()[[0, 1], [0, 1]], atol=1e-5)  # at its site's class, the network's own distance
    assert TransductiveClassifier(PrototypicalClassifier(net, support, float("inf")), pool, row_period_px=PERIOD,
                                  site_weight=0.0).row_period_px is None


def test_a_scans_polarity_picks_the_clicks_sites_too():
    """Class a was clicked on a crest at +1.5 V and in a trough at -1.5 V: a scan's site model of a
    starts from the click at its own polarity (steps = 0: the clicks alone). The network sees the
    same for every crop, so only the site tells the classes apart."""
    def crop(phase):
        c = grating(phase, 10.0)
        c[1, 31, :2] = 0.0
        return c
    support = CropSet("tio2110", {"a": np.stack([crop(0.0), crop(np.pi)]), "b": np.stack([crop(np.pi / 2)])},
                      bias_v={"a": np.array([1.5, -1.5]), "b": np.array([np.nan])})
    clf = TransductiveClassifier(PrototypicalClassifier(ProtoNet(FirstPixels()), support, float("inf")), None,
                                 steps=0, row_period_px=PERIOD)
    query = np.stack([crop(0.0)])
    for bias, mean_a in ((1.5, 1.0), (-1.5, -1.0), (None, 0.0)):
        support_cos = clf._start(bias)[3]
        site = ClassGaussian.fit(clf._one_hot if bias is None else clf._one_hot[[0 if bias > 0 else 1, 2]], support_cos)
        assert np.allclose(site.mean.numpy(), [mean_a, 0.0], atol=0.05)
    assert clf.classify(query, 1.5)[0][0] == "a" and clf.classify(query, -1.5)[0][0] == "b"


def test_the_site_never_makes_a_crop_unknown():
    """The unknown distance applies to the network's own distance to the nearest prototype
    (unlike every class), not to the distance with the site's penalty added."""
    def crop(phase, look):
        c = grating(phase, 40.0)
        c[1, 31, :2] = look
        return c
    support = CropSet("tio2110", {"a": np.stack([crop(0.0, [0.0, 1.0])]), "b": np.stack([crop(np.pi, [0.0, 0.0])])})
    query = np.stack([crop(np.pi, [0.0, 0.9])])  # looks like a (0.01 away), sits where b does (0.81 away)
    net = ProtoNet(FirstPixels())
    network, combined = TransductiveClassifier(PrototypicalClassifier(net, support, float("inf")), None, steps=0,
                                               row_period_px=PERIOD)._distances(query, None)
    assert combined.argmin() == 1 and combined.min() > network.min()  # b by its site, farther than a's look
    between = float(network.min() + combined.min()) / 2
    clf = TransductiveClassifier(PrototypicalClassifier(net, support, between), None, steps=0, row_period_px=PERIOD)
    assert clf.classify(query)[0][0] == "b"
    clf = TransductiveClassifier(PrototypicalClassifier(net, support, float(network.min()) / 2), None, steps=0,
                                 row_period_px=PERIOD)
    assert clf.classify(query)[0][0] == "unknown"
