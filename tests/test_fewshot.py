"""Few-shot classification: CI arithmetic, episodes, crop loading, training, the unknown label."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from stmwatch.models.fewshot.classifier import PrototypicalClassifier, calibrate_unknown_distance
from stmwatch.models.fewshot.crops import CropSet, load_surface, to_model_input
from stmwatch.models.fewshot.episodes import generate_classes, sample_episode
from stmwatch.models.fewshot.evaluation import evaluate
from stmwatch.models.fewshot.registry import build_method
from stmwatch.models.fewshot.stats import mean_ci95
from stmwatch.models.fewshot.synthetic import shape_crop, shape_set, write_set
from stmwatch.models.fewshot.training import TrainConfig, load, save, train

EASY = ("blob", "pit", "ring", "bar")


@pytest.fixture(scope="module")
def tiny_proto():
    """A conv4 prototypical network trained for 40 episodes on four toy shapes (seed 1)."""
    torch.set_num_threads(1)
    return train([shape_set(EASY, per_class=20, seed=1)],
                 TrainConfig(method="proto", way=4, query=5, episodes=40, seed=0))


def test_ci95_matches_hand_computation():
    # accuracies 0.5, 0.75, 1.0, 0.75: mean 0.75, sample variance (0.0625 + 0 + 0.0625 + 0) / 3,
    # half-width 1.96 * sqrt(0.0416667 / 4) = 1.96 * 0.1020621 = 0.2000417
    mean, half = mean_ci95([0.5, 0.75, 1.0, 0.75])
    assert mean == pytest.approx(0.75)
    assert half == pytest.approx(0.2000417, abs=1e-6)
    assert mean_ci95([0.9]) == (0.9, 0.0)
    assert mean_ci95([0.5] * 10) == (0.5, 0.0)


def test_episode_has_distinct_support_and_query_of_the_drawn_classes():
    # crop i of class k is filled with the value 100 k + i, so every crop is identifiable
    crops = {f"c{k}": np.stack([np.full((2, 32, 32), 100 * k + i, np.float32) for i in range(6)]) for k in range(5)}
    ep = sample_episode(CropSet("toy", crops), way=3, shot=2, query=4, rng=np.random.default_rng(0))
    assert ep.support.shape == (6, 2, 32, 32) and ep.query.shape == (12, 2, 32, 32)
    assert list(ep.support_labels) == [0, 0, 1, 1, 2, 2] and list(ep.query_labels) == [0] * 4 + [1] * 4 + [2] * 4
    assert len(set(ep.classes)) == 3
    for x, labels in ((ep.support, ep.support_labels), (ep.query, ep.query_labels)):
        for crop, label in zip(x, labels):  # every crop belongs to the class its label names
            assert int(crop[0, 0, 0]) // 100 == int(ep.classes[label][1:])
    ids = [int(c[0, 0, 0]) for c in np.concatenate([ep.support, ep.query])]
    assert len(set(ids)) == len(ids)
    with pytest.raises(ValueError):
        sample_episode(CropSet("toy", crops), way=6, shot=1, query=1, rng=np.random.default_rng(0))


def test_crops_of_any_size_and_channels_become_model_input(tmp_path):
    one = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    x = to_model_input(one)
    assert x.shape == (1, 2, 32, 32)
    assert np.array_equal(x[0, 0], x[0, 1])  # one channel used twice
    # bilinear 2x downsampling of a linear ramp averages neighbouring pixels
    assert x[0, 0, 0, 0] == pytest.approx((0 + 1 + 64 + 65) / 4)
    # a class folder of .npy and .png crops of different sizes loads as one (n, 2, 32, 32) array
    from PIL import Image

    folder = tmp_path / "surf" / "blob"
    folder.mkdir(parents=True)
    np.save(folder / "a.npy", shape_crop("blob", np.random.default_rng(0)))
    img = (shape_crop("blob", np.random.default_rng(1), size=48)[0] * 60 + 100).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "b.png")
    s = load_surface(tmp_path, "surf")
    assert s.crops["blob"].shape == (2, 2, 32, 32)
    png = s.crops["blob"][1]
    assert abs(float(np.median(png))) < 0.1  # images are normalised per crop
    assert png[:, 14:18, 14:18].mean() > 1.0  # the blob stays bright at the centre


def test_generated_classes_skip_symmetric_copies():
    s = shape_set(("blob", "bar"), per_class=8, seed=0, noise=0.0)
    g = generate_classes(s, ("rot90", "invert"))
    # a round blob turned by 90 degrees is the same blob: no new class; a bar turned is a new one
    assert set(g.crops) == {"blob", "bar", "blob~invert", "bar~invert", "bar~rot90"}
    assert np.allclose(g.crops["bar~invert"], -s.crops["bar"])


def test_tiny_proto_beats_chance_on_unseen_crops(tiny_proto):
    result = evaluate(tiny_proto, shape_set(EASY, per_class=20, seed=7), way=4, shot=1, episodes=30, seed=3)
    assert result["accuracy"] > 0.7  # chance is 0.25
    assert 0 < result["ci95"] < 0.1
    # the untrained network of the same architecture is clearly worse on the same episodes
    torch.manual_seed(0)
    untrained = evaluate(build_method("proto").eval(), shape_set(EASY, per_class=20, seed=7), episodes=30, seed=3)
    assert result["accuracy"] > untrained["accuracy"]


def test_unknown_for_an_out_of_distribution_crop(tiny_proto):
    threshold = calibrate_unknown_distance(tiny_proto, [shape_set(EASY, per_class=20, seed=1)], episodes=20)
    clf = PrototypicalClassifier(tiny_proto, shape_set(EASY, per_class=3, seed=11), threshold)
    queries = shape_set(EASY, per_class=10, seed=12)
    rng = np.random.default_rng(5)
    stripes = np.tile(np.where(np.arange(32) % 4 < 2, 4.0, -4.0).astype(np.float32), (2, 32, 1))
    ood = np.stack([stripes, rng.normal(0, 3, (2, 32, 32)).astype(np.float32)])
    batch = np.concatenate([queries.crops[k] for k in EASY] + [ood])
    answers = clf.classify(batch)
    assert len(answers) == len(batch)
    assert [a[0] for a in answers[-2:]] == ["unknown", "unknown"]
    labels = [a[0] for a in answers[:-2]]
    truth = [k for k in EASY for _ in range(10)]
    assert np.mean([a == t for a, t in zip(labels, truth)]) >= 0.8  # in-distribution crops keep their names
    assert all(0 < s <= 1 for _, s in answers)


def test_save_load_round_trip(tiny_proto, tmp_path):
    path = save(tmp_path / "w.pt", tiny_proto, TrainConfig(episodes=40), {"unknown_distance": 1.5})
    net, config, meta = load(path)
    x = torch.from_numpy(shape_set(EASY, per_class=2, seed=4).crops["ring"])
    with torch.no_grad():
        assert torch.allclose(net.backbone(x), tiny_proto.backbone(x), atol=1e-6)
    assert config.episodes == 40 and meta["unknown_distance"] == 1.5


@pytest.mark.parametrize("method,backbone", [("matching", "conv4"), ("relation", "conv4"),
                                             ("simpleshot", "resnet18"), ("pixel_nn", "none")])
def test_every_method_fits_and_predicts(method, backbone):
    torch.manual_seed(0)
    m = train([shape_set(EASY, per_class=10, seed=1)],
              TrainConfig(method=method, backbone=backbone, way=4, query=3, episodes=2, batch_size=8))
    r = evaluate(m, shape_set(EASY, per_class=6, seed=2), way=4, shot=1, query=5, episodes=3)
    assert 0 <= r["accuracy"] <= 1 and r["query"] == 5


def test_pixel_nn_is_exact_on_noise_free_copies():
    s = shape_set(EASY, per_class=2, seed=0, noise=0.0)
    m = build_method("pixel_nn")
    m.fit(torch.from_numpy(np.stack([s.crops[k][0] for k in EASY])), torch.arange(4))
    assert m.predict(torch.from_numpy(np.stack([s.crops[k][0] for k in EASY]))).tolist() == [0, 1, 2, 3]


def test_train_and_eval_commands(tmp_path, capsys):
    from stmwatch.daemon.cli import main

    write_set(shape_set(EASY, per_class=12, seed=1, surface="toy"), tmp_path / "crops")
    weights = tmp_path / "proto.pt"
    assert main(["train", "fewshot", "--data", str(tmp_path / "crops"), "--surfaces", "toy", "--episodes", "3",
                 "--way", "4", "--query", "4", "--threads", "1", "--out", str(weights)]) == 0
    _, _, meta = load(weights)
    assert math.isfinite(meta["unknown_distance"]) and meta["unknown_distance"] > 0
    capsys.readouterr()
    assert main(["eval", "fewshot", "--data", str(tmp_path / "crops"), "--surface", "toy", "--method", "proto",
                 "--weights", str(weights), "--episodes", "5", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["accuracy"] <= 1 and out["ci95"] >= 0 and out["episodes"] == 5 and out["way"] == 4


def test_cosine_prototypes_ignore_amplitude():
    from torch import nn

    from stmwatch.models.fewshot.proto import ProtoNet

    s = shape_set(EASY, per_class=1, seed=0, noise=0.0)
    support = torch.from_numpy(np.concatenate([s.crops[k] for k in EASY]))
    cos, euc = ProtoNet(nn.Flatten(), "cosine"), ProtoNet(nn.Flatten(), "euclidean")
    for net in (cos, euc):
        net.fit(support, torch.arange(4))
    query = 5.0 * support  # the same shapes, five times as high
    d = cos.distances(query)
    assert torch.allclose(d.diagonal(), torch.zeros(4), atol=1e-5) and float(d.max()) <= 4.0 + 1e-5
    assert cos.predict(query).tolist() == [0, 1, 2, 3]
    assert float(euc.distances(query).diagonal().min()) > 1.0  # the raw metric sees the amplitude


def test_strong_augmentation_keeps_shape_and_is_finite():
    from stmwatch.models.fewshot.episodes import augment

    x = shape_set(EASY, per_class=4, seed=0).crops["ring"]
    y = augment(x, np.random.default_rng(0), strong=True)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    assert not np.allclose(y, augment(x, np.random.default_rng(1), strong=True))


def test_mixed_surface_episodes_and_learnt_temperature_round_trip(tmp_path):
    """--mix-surfaces draws 8-way episodes from two 4-class surfaces; a learnt temperature moves
    and survives save/load."""
    torch.manual_seed(0)
    a, b = shape_set(EASY, per_class=8, seed=1, surface="a"), shape_set(EASY, per_class=8, seed=2, surface="b")
    b = CropSet("b", {f"{k}_b": -x for k, x in b.crops.items()})
    config = TrainConfig(method="proto", metric="cosine", way=8, shot=1, query=2, episodes=3, seed=0,
                         mix_surfaces=True, strong_augment=True, learn_temperature=True)
    net = train([a, b], config)
    assert net.temperature != 10.0
    net2, config2, _ = load(save(tmp_path / "w.pt", net, config))
    assert config2.learn_temperature and config2.mix_surfaces and net2.temperature == pytest.approx(net.temperature)
    # an old checkpoint (fixed temperature) still loads: no log_temperature in its state dict
    old, _, _ = load(save(tmp_path / "old.pt", build_method("proto", metric="cosine"), TrainConfig(metric="cosine")))
    assert old.temperature == 10.0


def test_tta_flips_is_the_mean_of_the_four_mirror_images():
    """Euclidean, identity backbone: the embedding is the mean of the crop and its three mirror
    images, checked on a 2×2 crop by hand."""
    from torch import nn

    from stmwatch.models.fewshot.proto import ProtoNet

    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    net = ProtoNet(nn.Flatten(), "euclidean", tta="flips")
    # identity 1 2 3 4, left-right 2 1 4 3, up-down 3 4 1 2, both 4 3 2 1: every pixel's mean is 2.5
    assert net.embed(x).tolist() == [[2.5, 2.5, 2.5, 2.5]]
    net.tta = "none"
    assert net.embed(x).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    y = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    net.tta = "d8"  # the 8 turns/mirrors take a corner pixel to each corner twice
    assert net.embed(y).tolist() == [[0.25, 0.25, 0.25, 0.25]]
    with pytest.raises(ValueError):
        ProtoNet(nn.Flatten(), tta="rot45")


def test_tta_makes_the_embedding_invariant_to_its_transforms(tiny_proto):
    """With tta="d8" (a group) a turned or mirrored crop has the same embedding; with "flips"
    mirrored crops do, turned ones need not."""
    from stmwatch.models.fewshot.proto import TTA

    x = torch.from_numpy(shape_set(("bar",), per_class=3, seed=4).crops["bar"])
    old = tiny_proto.tta
    try:
        tiny_proto.tta = "d8"
        e = tiny_proto.embed(x)
        for t in TTA["d8"]:
            assert torch.allclose(tiny_proto.embed(t(x).contiguous()), e, atol=1e-4)
        tiny_proto.tta = "flips"
        e = tiny_proto.embed(x)
        for t in TTA["flips"]:
            assert torch.allclose(tiny_proto.embed(t(x).contiguous()), e, atol=1e-4)
    finally:
        tiny_proto.tta = old
    assert len(TTA["d8"]) == 8 and len(TTA["flips"]) == 4


def test_ensemble_distance_is_the_mean_of_its_members():
    from torch import nn

    from stmwatch.models.fewshot.proto import ProtoEnsemble, ProtoNet

    s = shape_set(EASY, per_class=2, seed=0)
    support = torch.from_numpy(np.concatenate([s.crops[k][:1] for k in EASY]))
    query = torch.from_numpy(np.concatenate([s.crops[k][1:] for k in EASY]))
    a, b = ProtoNet(nn.Flatten(), "cosine"), ProtoNet(nn.Sequential(nn.AvgPool2d(2), nn.Flatten()), "cosine")
    ens = ProtoEnsemble([a, b])
    ens.fit(support, torch.arange(4))
    expected = (a.distances(query) + b.distances(query)) / 2
    assert torch.allclose(ens.distances(query), expected)
    assert torch.allclose(ens.scores(query), -10.0 * expected)
    ens.tta = "flips"
    assert a.tta == b.tta == "flips"


def test_eval_command_tta_and_ensemble(tmp_path, capsys):
    from stmwatch.daemon.cli import main

    write_set(shape_set(EASY, per_class=12, seed=1, surface="toy"), tmp_path / "crops")
    paths = []
    for seed in (0, 1):
        net = train([shape_set(EASY, per_class=12, seed=1)], TrainConfig(method="proto", metric="cosine", way=4,
                                                                         query=4, episodes=2, seed=seed))
        paths.append(str(save(tmp_path / f"w{seed}.pt", net, TrainConfig(metric="cosine"), {"tta": "flips"})))
    common = ["eval", "fewshot", "--data", str(tmp_path / "crops"), "--surface", "toy", "--method", "proto",
              "--episodes", "3", "--json", "--threads", "1"]
    capsys.readouterr()
    assert main(common + ["--weights", paths[0]]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == "flips"  # from the checkpoint's meta
    assert main(common + ["--weights", ",".join(paths), "--tta", "d8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tta"] == "d8" and 0 <= out["accuracy"] <= 1


def test_classifier_takes_tta_from_the_weights_meta(tiny_proto, tmp_path):
    from stmwatch.models.fewshot.classifier import load_classifier

    s = shape_set(EASY, per_class=2, seed=3, surface="toy")
    write_set(s, tmp_path / "support")
    path = save(tmp_path / "w.pt", tiny_proto, TrainConfig(episodes=40), {"tta": "d8", "unknown_distance": 1e9})
    # the contrast cue measures the core about pixel (16, 16), which a quarter turn of a 32-px crop
    # moves by a pixel: the embedding's own invariance is what is checked here
    clf = load_classifier("toy", support_dir=tmp_path / "support", weights=path, contrast_cue=False)
    assert clf.net.tta == "d8"
    crop = s.crops["bar"][:1]
    turned = np.ascontiguousarray(np.rot90(crop, 1, axes=(-2, -1)))
    assert np.allclose(clf.distances(crop), clf.distances(turned), atol=1e-4)
    assert load_classifier("toy", support_dir=tmp_path / "support", weights=path, tta="none").net.tta == "none"
