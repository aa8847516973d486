"""Crops with their look (bias polarity, inverted contrast) and cross-look episodes (models/fewshot/looks.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stmwatch.models.fewshot.class_looks import class_look, episode_class_looks
from stmwatch.models.fewshot.look_crops import look_crops, make_session_set
from stmwatch.models.fewshot.looks import (LookSet, cross_look_accuracy, sample_cross_episode, sample_session_episode,
                                           session_accuracy, session_crop_sets)
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


def toy_sessions() -> LookSet:
    """Three sessions (microscopes) of the toy shapes; each crop carries its session's number as an
    offset of 100 * (session + 1), so an episode's crops tell which session they came from.
    Session 2 has only one class with more than a crop (no 2-way episode can be drawn in it)."""
    plain = shape_set(("blob", "pit", "ring", "bar"), per_class=12, seed=1)
    xs, cs, ms = [], [], []
    for m in range(3):
        for c, x in plain.crops.items():
            n = 4 if m < 2 or c == "blob" else 1
            xs.append(x[:n] + 100.0 * (m + 1))
            cs += [c] * n
            ms += [m] * n
    n = len(cs)
    return LookSet("toy", np.concatenate(xs).astype(np.float32), np.array(cs), np.zeros(n, np.int64), np.array(ms))


def test_session_episodes_draw_support_and_queries_from_one_microscope(tmp_path):
    looks = toy_sessions()
    sessions = session_crop_sets(looks, 3)
    assert len(sessions) == 2  # session 2 has one class of 3 crops: no episode there
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        ep = sample_session_episode(sessions, 4, 1, 2, rng)
        offsets = {int(round(float(np.median(x)) / 100.0)) for x in np.concatenate([ep.support, ep.query])}
        assert len(offsets) == 1 and len(ep.classes) == 4
        seen |= offsets
    assert seen == {1, 2}
    # round trip, and within() keeps each crop's session
    back = LookSet.load(looks.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.sessions, looks.sessions)
    assert LookSet.load(toy_looks(per_look=2).save(tmp_path / "n.npz")).sessions is None
    cut = LookSet(looks.surface, looks.crops - np.where(looks.sessions == 0, 0.0, 100.0 * (looks.sessions + 1))[:, None, None, None]
                  .astype(np.float32), looks.classes, looks.looks, looks.sessions).within(25.0)
    assert len(cut.classes) == int(np.sum(looks.sessions > 0)) and set(cut.sessions) == {1, 2}
    with pytest.raises(ValueError, match="sessions are not known"):
        session_crop_sets(toy_looks(), 2)


def test_session_training_draws_every_episode_within_a_session(monkeypatch):
    import stmwatch.models.fewshot.training as training

    torch.set_num_threads(1)
    looks = toy_sessions()
    drawn = []

    def counted(*args, **kwargs):
        ep = sample_session_episode(*args, **kwargs)
        drawn.append({int(round(float(np.median(x)) / 100.0)) for x in np.concatenate([ep.support, ep.query])})
        return ep

    monkeypatch.setattr(training, "sample_session_episode", counted)
    cfg = TrainConfig(method="proto", metric="cosine", way=4, shot=1, query=2, episodes=3, seed=0, cross_look=1.0)
    net = train([looks], cfg)
    assert len(drawn) == 3 and all(len(sessions) == 1 for sessions in drawn)
    assert 0.0 <= session_accuracy(net, looks, episodes=3, query=2) <= 1.0


def test_session_set_of_randomised_microscopes():
    looks = make_session_set("tio2110", 2, 2, 11, pixels=64)
    assert set(looks.sessions) <= {0, 1} and len(looks.sessions) == len(looks.classes) == len(looks.crops) > 0
    assert looks.crops.shape[1:] == (2, 32, 32)


def _blob(sigma_px: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[:32, :32]
    return np.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / (2 * sigma_px**2)).astype(np.float32)


def test_class_look_stretches_about_the_centre_and_keeps_the_surroundings(monkeypatch):
    from stmwatch.models.fewshot import class_looks

    monkeypatch.setitem(class_looks.RANGES, "size", (1.3, 1.3))
    monkeypatch.setitem(class_looks.RANGES, "anisotropy", (1.0, 1.0))
    monkeypatch.setitem(class_looks.RANGES, "gamma", (1.0, 1.0))
    monkeypatch.setitem(class_looks.RANGES, "invert", 0.0)
    monkeypatch.setitem(class_looks.RANGES, "blur_share", 0.0)
    blob = _blob(3.0)
    x = np.stack([blob, blob])[None]
    x[0, :, 0, :] = 5.0  # a "lattice" line at the crop's edge, beyond outer_px
    out = class_look(x, np.random.default_rng(0))
    half_max = lambda a: int((a[4:28, 4:28] > a[4:28, 4:28].max() / 2).sum())  # noqa: E731
    # a Gaussian magnified 1.3x covers 1.69x the area at half maximum (counted in pixels: 1.5 here)
    assert 1.4 < half_max(out[0, 0]) / half_max(blob) < 1.9
    assert tuple(int(v) + 4 for v in np.unravel_index(out[0, 0, 4:28, 4:28].argmax(), (24, 24))) in {(15, 15), (15, 16), (16, 15), (16, 16)}
    np.testing.assert_allclose(out[0, :, 0, :], 5.0)  # the surroundings are not touched


def test_class_look_anisotropy_stretches_along_its_axis(monkeypatch):
    from stmwatch.models.fewshot import class_looks

    for key, value in {"size": (1.0, 1.0), "anisotropy": (1.45, 1.45), "gamma": (1.0, 1.0), "invert": 0.0,
                       "blur_share": 0.0}.items():
        monkeypatch.setitem(class_looks.RANGES, key, value)
    x = np.stack([_blob(2.5)] * 2)[None]
    spreads = []
    for angle in (0.0, np.pi / 2):  # long axis along the rows' axis (down the image), then across
        monkeypatch.setitem(class_looks.RANGES, "angle", (angle, angle))
        out = class_look(x, np.random.default_rng(0))[0, 0]
        rows, cols = np.nonzero(out > out.max() / 2)
        spreads.append((np.ptp(rows), np.ptp(cols)))
    (r0, c0), (r1, c1) = spreads
    assert r0 > c0 + 1 and c1 > r1 + 1  # 1.45 / (1 / 1.45) = 2.1x longer along the axis
    with pytest.raises(ValueError, match="square"):
        class_look(np.zeros((1, 2, 32, 30), np.float32), np.random.default_rng(0))


def test_episode_class_looks_give_support_and_queries_of_a_class_the_same_look():
    blob = _blob()
    support = np.stack([np.stack([blob, blob])] * 2)  # two classes, one crop each, identical
    query = np.stack([np.stack([blob, blob])] * 4)
    s_lab, q_lab = np.array([0, 1]), np.array([0, 0, 1, 1])
    new_s, new_q = episode_class_looks(support, s_lab, query, q_lab, np.random.default_rng(4), share=1.0)
    for label in (0, 1):
        for q in new_q[q_lab == label]:
            np.testing.assert_allclose(q, new_s[s_lab == label][0], atol=1e-6)
    assert not np.allclose(new_s[0], new_s[1])  # each class its own look
    same_s, same_q = episode_class_looks(support, s_lab, query, q_lab, np.random.default_rng(4), share=0.0)
    np.testing.assert_array_equal(same_s, support)
    np.testing.assert_array_equal(same_q, query)
