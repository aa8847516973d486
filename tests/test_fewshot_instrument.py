"""Per-crop normalisation, the instrument augmentation and the training crops cut from scans."""
from __future__ import annotations

import json

import numpy as np
import torch

from stmwatch.models.fewshot.backbones import build_backbone
from stmwatch.models.fewshot.classifier import PrototypicalClassifier
from stmwatch.models.fewshot.crops import CropSet, normalise_crop, normalise_crops
from stmwatch.models.fewshot.instrument import instrument_augment
from stmwatch.models.fewshot.proto import ProtoNet
from stmwatch.models.robust import robust_sigma


def blobs(n: int = 6, seed: int = 0) -> np.ndarray:
    """``(n, 2, 32, 32)`` crops: a bright Gaussian spot (sigma 3 px) at the centre on weak noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    spot = np.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / (2 * 3.0 ** 2))
    return (5 * spot + rng.normal(0, 0.2, (n, 2, 32, 32))).astype(np.float32)


def test_normalise_crop_is_idempotent_and_ignores_scale_and_offset():
    x = blobs(1)[0]
    once = normalise_crop(x)
    assert abs(float(np.median(once))) < 1e-6 and abs(robust_sigma(once) - 1.0) < 1e-5
    np.testing.assert_allclose(normalise_crop(once), once, atol=1e-5)
    np.testing.assert_allclose(normalise_crop(7.0 * x - 3.0), once, atol=1e-4)
    assert normalise_crops(np.zeros((0, 2, 32, 32), np.float32)).shape == (0, 2, 32, 32)


def test_instrument_augment_is_deterministic_per_seed_and_keeps_the_defect_near_the_centre():
    x = blobs(8)
    a = instrument_augment(x, np.random.default_rng(3))
    b = instrument_augment(x, np.random.default_rng(3))
    c = instrument_augment(x, np.random.default_rng(4))
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.allclose(a, normalise_crops(x), atol=1e-3)  # it does change the crops
    for crop in a:  # normalised on its own; the spot's brightest pixel moved at most shift + turn + scale
        assert abs(float(np.median(crop))) < 1e-4 and abs(robust_sigma(crop) - 1.0) < 1e-3
        smooth = crop.mean(axis=0)
        r, c = np.unravel_index(np.argmax(smooth), smooth.shape)
        assert np.hypot(r - 15.5, c - 15.5) < 5.0


def test_a_per_crop_classifier_ignores_the_scan_wide_scale_of_its_crops():
    torch.manual_seed(0)
    net = ProtoNet(build_backbone("conv4"), metric="cosine").eval()
    rng = np.random.default_rng(1)
    support = CropSet("si001h", {"a": blobs(1, 1), "b": rng.normal(0, 1, (1, 2, 32, 32)).astype(np.float32)})
    query = np.concatenate([blobs(3, 2), rng.normal(0, 1, (3, 2, 32, 32)).astype(np.float32)])
    per_crop = PrototypicalClassifier(net, support, float("inf"), crop_norm="per_crop")
    d = per_crop.distances(query)
    # the same crops as another scan's normalisation would give them: scaled and shifted
    np.testing.assert_allclose(per_crop.distances(0.3 * query + 2.0), d, atol=1e-4)
    scaled = PrototypicalClassifier(net, CropSet("si001h", {k: 0.3 * v + 2.0 for k, v in support.crops.items()}),
                                    float("inf"), crop_norm="per_crop")
    np.testing.assert_allclose(scaled.distances(query), d, atol=1e-4)
    plain = PrototypicalClassifier(net, support, float("inf"))
    assert not np.allclose(plain.distances(0.3 * query + 2.0), plain.distances(query), atol=1e-3)


def test_scan_crops_are_cut_at_the_true_defects_of_a_simulated_scan(tmp_path):
    from stmwatch.models.fewshot.crops import load_surface
    from stmwatch.models.fewshot.scan_crops import make_scan_crops, scan_crops

    crops = scan_crops("si001h", 5, pixels=96)
    assert crops and all(c.shape == (2, 32, 32) and c.dtype == np.float32 for _, c in crops)
    assert {cls for cls, _ in crops} <= {"dangling_bond", "as_incorporated", "vacancy", "ash3_fragment"}
    assert all(abs(robust_sigma(c) - 1.0) < 1e-3 for _, c in crops)
    counts = make_scan_crops(tmp_path, ["si001h"], 2, 7, per_class=1)
    assert all(n == 1 for n in counts["si001h"].values())
    assert load_surface(tmp_path, "si001h").counts() == counts["si001h"]
    assert json.dumps(counts)  # plain numbers


def test_finetune_on_lab_crops_is_deterministic_and_moves_the_embedding():
    from stmwatch.models.fewshot.pseudo import PseudoSettings, finetune_on_lab_crops

    rng = np.random.default_rng(0)
    crops = normalise_crops(np.concatenate([blobs(20, 1), -blobs(20, 2), rng.normal(0, 1, (20, 2, 32, 32))]))
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        net = ProtoNet(build_backbone("conv4"), metric="cosine")
        before = [p.detach().clone() for p in net.parameters()]
        summary = finetune_on_lab_crops(net, crops, PseudoSettings(steps=4, clusters=3, way=3, query=2))
        assert summary["steps"] == 4 and summary["clusters"] >= 2 and not net.training
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
        results.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    torch.manual_seed(0)
    few = ProtoNet(build_backbone("conv4"), metric="cosine")
    assert finetune_on_lab_crops(few, crops[:5], PseudoSettings(steps=4))["steps"] == 0


def test_the_unknown_gate_only_ever_adds_unknown():
    torch.manual_seed(0)
    net = ProtoNet(build_backbone("conv4"), metric="cosine").eval()
    gate = ProtoNet(build_backbone("conv4")).eval()
    rng = np.random.default_rng(2)
    support = CropSet("si001h", {"a": blobs(1, 1), "b": rng.normal(0, 1, (1, 2, 32, 32)).astype(np.float32)})
    query = np.concatenate([blobs(3, 2), rng.normal(0, 1, (3, 2, 32, 32)).astype(np.float32)])
    plain = PrototypicalClassifier(net, support, float("inf"), crop_norm="per_crop").classify(query)
    assert "unknown" not in [label for label, _ in plain]
    open_gate = PrototypicalClassifier(net, support, float("inf"), crop_norm="per_crop", gate=(gate, float("inf")))
    assert open_gate.classify(query) == plain
    with torch.no_grad():
        gate.fit(torch.from_numpy(support.crops["a"]), torch.zeros(1, dtype=torch.long))
    closed = PrototypicalClassifier(net, support, float("inf"), crop_norm="per_crop", gate=(gate, 0.0))
    assert [label for label, _ in closed.classify(query)] == ["unknown"] * len(query)
