"""The few-shot classifier's polarity maps (models/fewshot/polarity.py): fitting, storing, and a
class clicked at one bias polarity named at the other."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stmwatch.models.fewshot.classifier import PrototypicalClassifier, load_classifier
from stmwatch.models.fewshot.crops import CropSet
from stmwatch.models.fewshot.look_crops import paired_polarity_crops
from stmwatch.models.fewshot.polarity import embedding_fingerprint, fit_map, load_maps, map_key, save_maps, translate
from stmwatch.models.fewshot.proto import ProtoNet
from stmwatch.models.fewshot.transductive import TransductiveClassifier


class FirstTwo(torch.nn.Module):
    """An 'embedding': the first two pixels of channel 0, times a weight (so nets can differ)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return self.scale * x[:, 0, 0, :2]


def crop(a: float, b: float) -> np.ndarray:
    c = np.zeros((2, 32, 32), np.float32)
    c[0, 0, 0], c[0, 0, 1] = a, b
    return c


def test_a_ridge_map_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(200, 3))
    a, offset = rng.normal(size=(3, 3)), np.array([0.5, -1.0, 2.0])
    w = fit_map(source, source @ a + offset, ridge=1e-6)
    assert w.shape == (4, 3)
    assert np.allclose(w[:3], a, atol=1e-4) and np.allclose(w[3], offset, atol=1e-4)
    moved = translate(w, torch.from_numpy(source[:5].astype(np.float32)), unit=False).numpy()
    assert np.allclose(moved, source[:5] @ a + offset, atol=1e-3)
    unit = translate(w, torch.from_numpy(source[:5].astype(np.float32))).numpy()
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


def test_maps_are_refused_for_another_embedding(tmp_path):
    net = FirstTwo(1.0)
    path = save_maps(tmp_path / "maps.npz", {map_key("si001h", 1): np.eye(3, 2, dtype=np.float32)},
                     embedding_fingerprint(net), "d8")
    maps = load_maps(path, "si001h", net, "d8")
    assert list(maps) == [1] and np.allclose(maps[1], np.eye(3, 2))
    assert load_maps(path, "tio2110", FirstTwo(2.0), "d8") == {}  # none for that surface: nothing to check
    with pytest.raises(ValueError, match="fitted for embedding"):
        load_maps(path, "si001h", FirstTwo(2.0), "d8")  # other weights
    with pytest.raises(ValueError, match="augmentation 'd8', not this one"):
        load_maps(path, "si001h", net, "none")  # the same weights, embedded without the turns and mirrors


def test_a_class_clicked_at_one_polarity_is_translated_to_the_other():
    """Class a was clicked at -1.8 V, where it looks like (0, 1); the map says that at positive bias
    such a defect looks like (1, 0) (the two pixels swap). b was clicked once, bias unknown, at
    (0.5, -0.5). A query (0.9, 0.1) in a +2 V scan: 1.62 from the untranslated a, 0.52 from b, 0.02
    from the translated a."""
    support = CropSet("si001h", {"a": np.stack([crop(0.0, 1.0)]), "b": np.stack([crop(0.5, -0.5)])},
                      bias_v={"a": np.array([-1.8]), "b": np.array([np.nan])})
    swap = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]], np.float32)  # (d + 1, d): no offset
    query = np.stack([crop(0.9, 0.1)])

    def classifier(maps):
        return TransductiveClassifier(PrototypicalClassifier(ProtoNet(FirstTwo()), support, float("inf")), None,
                                      steps=0, polarity_maps=maps)
    plain, mapped = classifier(None), classifier({1: swap})
    assert [lab for lab, _ in plain.classify(query, bias_v=2.0)] == ["b"]
    assert [lab for lab, _ in mapped.classify(query, bias_v=2.0)] == ["a"]
    assert np.allclose(mapped.refined_prototypes(query, bias_v=2.0).numpy(), [[1.0, 0.0], [0.5, -0.5]])
    # at the click's own polarity, and for a scan of unknown bias, the click is used as it is
    assert np.allclose(mapped.refined_prototypes(query, bias_v=-2.0).numpy(), [[0.0, 1.0], [0.5, -0.5]])
    assert np.allclose(mapped.refined_prototypes(query, bias_v=None).numpy(), [[0.0, 1.0], [0.5, -0.5]])
    assert np.allclose(mapped.net.prototypes.numpy(), [[0.0, 1.0], [0.5, -0.5]])  # the support is not changed


def test_with_clicks_at_both_polarities_the_other_ones_are_translated_and_join():
    """Class a clicked at -1.8 V (0, 1) and at +1.2 V (1, 0.2); the map to empty states swaps the two
    pixels. For a +2 V scan a's prototype is the mean of (1, 0.2) and the translated (1, 0); for a
    -2 V scan, with no map towards filled states, the -1.8 V click alone."""
    support = CropSet("si001h", {"a": np.stack([crop(0.0, 1.0), crop(1.0, 0.2)]), "b": np.stack([crop(-1.0, -1.0)])},
                      bias_v={"a": np.array([-1.8, 1.2]), "b": np.array([np.nan])})
    swap = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    clf = TransductiveClassifier(PrototypicalClassifier(ProtoNet(FirstTwo()), support, float("inf")), None,
                                 steps=0, polarity_maps={1: swap})
    query = np.stack([crop(0.9, 0.1)])
    assert np.allclose(clf.refined_prototypes(query, bias_v=2.0).numpy(), [[1.0, 0.1], [-1.0, -1.0]])
    assert np.allclose(clf.refined_prototypes(query, bias_v=-2.0).numpy(), [[0.0, 1.0], [-1.0, -1.0]])


def test_an_adapted_pools_crops_at_the_other_polarity_are_translated():
    """Class a clicked at +1.2 V at (1, 0); the lab's pool holds ten crops of a from -1.5 V scans, at
    (0, 1), which the map to empty states swaps to (1, 0). For a +2 V scan, one soft k-means step
    leaves a's prototype at (1, 0) when the pool's biases are known, and pulls it towards (0, 1)
    when they are not (the pool as it is)."""
    support = CropSet("si001h", {"a": np.stack([crop(1.0, 0.0)]), "b": np.stack([crop(-1.0, -1.0)])},
                      bias_v={"a": np.array([1.2]), "b": np.array([np.nan])})
    swap = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    pool = np.stack([crop(0.0, 1.0)] * 10)

    def classifier(pool_bias):
        return TransductiveClassifier(PrototypicalClassifier(ProtoNet(FirstTwo()), support, float("inf")), pool,
                                      steps=1, polarity_maps={1: swap}, pool_bias=pool_bias)
    query = np.zeros((0, 2, 32, 32), np.float32)
    known = classifier(np.full(10, -1.5)).refined_prototypes(query, bias_v=2.0).numpy()
    assert np.allclose(known[0], [1.0, 0.0], atol=1e-5)
    unknown = classifier(None).refined_prototypes(query, bias_v=2.0).numpy()
    assert unknown[0][1] > 0.5  # most of the way to the pool's (0, 1)
    # a -2 V scan: no map towards filled states, the pool as it is
    assert classifier(np.full(10, -1.5)).refined_prototypes(query, bias_v=-2.0).numpy()[0][1] > 0.5


def test_a_translated_click_has_unit_length_with_the_cosine_metric():
    """The cosine net's embeddings and prototypes are unit vectors: a translated click is made one
    too. Class a at -1.8 V looks like (0, 2), the map doubles and swaps: (4, 0) → unit (1, 0)."""
    support = CropSet("si001h", {"a": np.stack([crop(0.0, 2.0)]), "b": np.stack([crop(-1.0, -1.0)])},
                      bias_v={"a": np.array([-1.8]), "b": np.array([np.nan])})
    double_swap = np.array([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]], np.float32)
    clf = TransductiveClassifier(PrototypicalClassifier(ProtoNet(FirstTwo(), metric="cosine"), support, float("inf")),
                                 None, steps=0, polarity_maps={1: double_swap})
    query = np.stack([crop(0.9, 0.1)])
    s = 0.5 ** 0.5
    assert np.allclose(clf.refined_prototypes(query, bias_v=1.5).numpy(), [[1.0, 0.0], [-s, -s]], atol=1e-6)
    assert np.allclose(clf.refined_prototypes(query, bias_v=-1.5).numpy(), [[0.0, 1.0], [-s, -s]], atol=1e-6)


def test_the_shipped_maps_name_a_class_across_polarities_on_simulated_samples():
    """The shipped maps fit the shipped embedding (else loading refuses them), exist for the two
    surfaces imaged at both polarities, and do what they are for: on fresh simulated Si(001):H
    samples imaged at both polarities (seeds never fitted on), a single crop of each class at
    -|V| names the crops at +|V| better translated than as it is (nearest prototype, every crop
    of each class in turn as the click)."""
    clf = load_classifier("si001h", backend="torch")
    assert sorted(clf.polarity_maps) == [-1, 1]
    assert load_classifier("tio2110", backend="torch").polarity_maps == {}
    filled, empty, classes = zip(*(paired_polarity_crops("si001h", 777_000 + i) for i in range(10)))
    filled, empty, classes = np.concatenate(filled), np.concatenate(empty), np.concatenate(classes)
    e_filled, e_empty = clf._features(filled)[0], clf._features(empty)[0]
    moved = translate(clf.polarity_maps[1], e_filled)
    names = sorted(set(classes))
    rng = np.random.default_rng(0)

    def accuracy(clicks: torch.Tensor) -> float:
        hits = []
        for _ in range(50):  # one click per class, drawn at random
            pick = [int(rng.choice(np.flatnonzero(classes == k))) for k in names]
            nearest = torch.cdist(e_empty, clicks[pick]).argmin(1).numpy()
            hits.append(np.mean(np.array(names)[nearest] == classes))
        return float(np.mean(hits))
    raw, translated = accuracy(e_filled), accuracy(moved)
    assert translated > raw + 0.08, (raw, translated)


def test_weights_refuse_polarity_maps_other_than_theirs(tmp_path, caplog):
    """The weights name their maps with the maps' sha256: a changed or missing maps file, or maps of
    another embedding, are not used, with a warning naming the file and the problem; the classifier
    itself still works (without the maps, as before they existed)."""
    import shutil

    from stmwatch.models.fewshot.classifier import WEIGHTS

    for name in (WEIGHTS.name, "fewshot_proto_conv4_gate.pt", "fewshot_polarity.npz"):
        shutil.copy(WEIGHTS.parent / name, tmp_path / name)
    weights = tmp_path / WEIGHTS.name
    assert sorted(load_classifier("ge001", weights=weights).polarity_maps) == [-1, 1]
    assert load_classifier("ge001", weights=weights, tta="none").polarity_maps == {}  # fitted with d8
    assert "test-time augmentation 'd8'" in caplog.text
    with np.load(tmp_path / "fewshot_polarity.npz") as data:
        maps = {k: data[k] for k in data.files}
    maps["ge001__to_empty"] = maps["ge001__to_empty"] * 1.01
    np.savez(tmp_path / "fewshot_polarity.npz", **maps)
    caplog.clear()
    clf = load_classifier("ge001", weights=weights)
    assert clf.polarity_maps == {} and "fewshot_polarity.npz: sha256" in caplog.text
    assert clf.classify(np.zeros((1, 2, 32, 32), np.float32), bias_v=1.5)[0][0] in clf.labels + ["unknown"]
    (tmp_path / "fewshot_polarity.npz").unlink()
    caplog.clear()
    assert load_classifier("ge001", weights=weights).polarity_maps == {}
    assert "fewshot_polarity.npz is missing" in caplog.text and "polarity maps not used" in caplog.text


def test_models_polarity_maps_false_turns_them_off():
    """``[models] polarity_maps = false``: the daemon's classifier has no maps (each scan uses its own
    polarity's clicks); the default uses the shipped ones."""
    from stmwatch.daemon.config import Config
    from stmwatch.models.load import load_analyser
    from stmwatch.models.settings import ModelSettings

    on = load_analyser(Config(models=ModelSettings(backend="torch")), "ge001")
    off = load_analyser(Config(models=ModelSettings(backend="torch", polarity_maps=False)), "ge001")
    assert sorted(on.classifier.polarity_maps) == [-1, 1] and off.classifier.polarity_maps == {}
