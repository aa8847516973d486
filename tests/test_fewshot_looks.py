"""Crops with their look (bias polarity, inverted contrast) and cross-look episodes (models/fewshot/looks.py)."""
from __future__ import annotations

import numpy as np
import torch

from stmwatch.models.fewshot.look_crops import look_crops
from stmwatch.models.fewshot.looks import LookSet, cross_look_accuracy, sample_cross_episode
from stmwatch.models.fewshot.synthetic import shape_set
from stmwatch.models.fewshot.training import TrainConfig, load, save, train
from stmwatch.models.robust import robust_sigma
from stmwatch.models.sim.simulate import simulate_scan


def toy_looks(per_look: int = 10, seed: int = 0) -> LookSet:
    """Four toy shapes; look 0 as drawn, look 1 the same shapes inverted (another polarity)."""
    plain = shape_set(("blob", "pit", "ring", "bar"), per_class=2 * per_look, seed=seed)
    xs, cs, ls = [], [], []
    for c, x in plain.crops.items():
        xs += [x[:per_look], -x[per_look:]]
        cs += [c] * (2 * per_look)
        ls += [0] * per_look + [1] * per_look
    return LookSet("toy", np.concatenate(xs).astype(np.float32), np.array(cs), np.array(ls))


def test_cross_episode_support_has_one_look_and_queries_another():
    looks = toy_looks()
    rng = np.random.default_rng(3)
    for _ in range(5):
        ep = sample_cross_episode(looks, 3, 2, 4, rng)
        for i, c in enumerate(ep.classes):
            mine = looks.crops[looks.classes == c]
            look_of = [int(looks.looks[looks.classes == c][np.flatnonzero((mine == x).all(axis=(1, 2, 3)))[0]])
                       for x in np.concatenate([ep.support[ep.support_labels == i], ep.query[ep.query_labels == i]])]
            sup, qry = look_of[:2], look_of[2:]
            assert len(set(sup)) == 1 and sup[0] not in qry


def test_look_set_round_trip_and_counts(tmp_path):
    looks = toy_looks(per_look=3)
    back = LookSet.load(looks.save(tmp_path / "l.npz"))
    np.testing.assert_array_equal(back.crops, looks.crops)
    assert back.counts() == {c: {0: 3, 1: 3} for c in ("bar", "blob", "pit", "ring")}
    assert back.crop_set().counts() == {c: 6 for c in ("bar", "blob", "pit", "ring")}


def test_look_crops_are_cut_at_the_true_defects_with_the_scans_polarity():
    x, classes, looks = look_crops("ge001", 4, randomised=False, pixels=128)
    assert len(x) == len(classes) == len(looks) > 0
    assert all(abs(robust_sigma(c) - 1.0) < 1e-3 for c in x)
    # the same scan as look_crops draws it: its bias decides the look (empty states = 2)
    rng = np.random.default_rng([4, 29])
    _, truth = simulate_scan("ge001", int(rng.integers(0, 2**31 - 1)), pixels=(128, 128), range_nm=12.8,
                             style="training")
    assert set(looks) == {2 if truth.bias_v > 0 else 0}
    assert set(classes) <= {d.cls for d in truth.defects}
    xr, _, lr = look_crops("tio2110", 4, randomised=True, pixels=64)
    assert xr.shape[1:] == (2, 32, 32) and set(lr) <= {0, 1, 2, 3}


def test_cross_look_training_fine_tunes_a_start_net_and_round_trips(tmp_path):
    torch.set_num_threads(1)
    looks = toy_looks(per_look=8)
    cfg = TrainConfig(method="proto", metric="cosine", way=4, shot=1, query=3, episodes=2, seed=0, cross_look=1.0)
    first = train([looks], cfg)
    before = [p.detach().clone() for p in first.parameters()]
    tuned = train([looks], cfg, start=first)
    assert tuned is first and any(not torch.equal(a, b) for a, b in zip(before, tuned.parameters()))
    net, config, _ = load(save(tmp_path / "w.pt", tuned, cfg))
    assert config.cross_look == 1.0
    acc = cross_look_accuracy(net, looks, episodes=3, query=3)
    assert 0.0 <= acc <= 1.0
