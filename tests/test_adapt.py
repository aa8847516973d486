"""``stmwatch adapt`` with tiny models: pseudo-labels, fine-tuning, the bundle and its card; the
transductive prototypes; ``support suggest``'s ordering."""
from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
import torch

from stmwatch.daemon.cli import main
from stmwatch.drivers.sxm import read_sxm
from stmwatch.daemon.config import Config
from stmwatch.models.adapt import (AdaptSettings, PseudoLabels, UNetConfidentLabels, UNetFlipAgreementLabels, adapt,
                                  split_scans)
from stmwatch.models.bundle import load_bundle
from stmwatch.models.clicks import least_sure
from stmwatch.models.fewshot.classifier import PrototypicalClassifier
from stmwatch.models.fewshot.crops import CropSet
from stmwatch.models.fewshot.transductive import TransductiveClassifier
from stmwatch.models.load import load_analyser
from stmwatch.models.preprocess import PreprocessSettings
from stmwatch.models.settings import ModelSettings
from stmwatch.models.sim.simulate import simulate_scan, write_example
from stmwatch.models.unet import UNet, UNetConfig, save_checkpoint


def test_split_holds_back_the_last_quarter_by_name(tmp_path):
    paths = [tmp_path / f"s{i:02d}.sxm" for i in range(12)]
    train, held = split_scans(list(reversed(paths)), 0.25)
    assert held == paths[9:] and train == paths[:9]
    assert split_scans(paths[:3], 0.25) == (paths[:3], [])


def test_confident_labels_keep_sure_components_and_leave_unsure_pixels_out():
    prob = np.zeros((40, 40), np.float32)
    prob[5:10, 5:10] = 0.9  # sure
    prob[20:25, 20:25] = 0.45  # above the threshold, not sure
    prob[30:32, 30:40] = 0.2  # below the threshold, not background either
    seg = types.SimpleNamespace(probability=lambda prepared: prob, threshold=0.4)
    prepared = types.SimpleNamespace(valid=np.ones((40, 40), bool))
    labels = UNetConfidentLabels(seg, confident=0.6, unsure_low=0.1, min_area_px=4).labels(None, prepared)
    assert isinstance(labels, PseudoLabels)
    np.testing.assert_allclose(labels.centres, [[7.0, 7.0]])
    assert labels.unsure[22, 22] and labels.unsure[31, 35] and not labels.unsure[7, 7] and not labels.unsure[0, 0]


def test_flip_agreement_labels_need_every_mirror_pass_and_leave_half_seen_defects_out():
    """A fake network sees channel 0 in every pass, channel 1 only in the right half of what it
    is given: a feature there is seen by the identity and up-down passes, not the two left-right."""
    image = np.zeros((2, 40, 40), np.float32)
    image[0, 5:10, 5:10] = 0.9  # seen by all four passes
    image[1, 20:25, 28:33] = 1.0  # right half: seen by two passes (mean 0.5, above threshold and 'confident')
    image[0, 30:33, 5:8] = 0.05  # every pass below unsure_low: background

    def backend(batch):
        right = np.zeros(batch.shape[-2:], np.float32)
        right[:, 20:] = 1.0
        return np.maximum(batch[:, 0], batch[:, 1] * right)

    seg = types.SimpleNamespace(backend=backend, threshold=0.4, tile_px=40, tile_overlap_px=0, batch_size=4)
    prepared = types.SimpleNamespace(image=image, valid=np.ones((40, 40), bool))
    labels = UNetFlipAgreementLabels(seg, confident=0.45, unsure_low=0.1, min_area_px=4).labels(None, prepared)
    np.testing.assert_allclose(labels.centres, [[7.0, 7.0]])
    assert labels.unsure[22, 30] and not labels.unsure[7, 7] and not labels.unsure[31, 6] and not labels.unsure[0, 0]
    two = UNetFlipAgreementLabels(seg, confident=0.45, unsure_low=0.1, min_area_px=4, agree=2).labels(None, prepared)
    assert len(two.centres) == 2 and not two.unsure[22, 30]


class Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :2]


def test_unknown_distance_is_the_spread_within_the_lab_crops_clusters():
    """Two tight groups of lab crops 10 apart (embedding = the first two pixels): the distance
    reaches across a group (squared, at most (4 x 0.1)^2 x 2 here), never from one group to the other (100)."""
    from stmwatch.models.adapt import unknown_distance
    from stmwatch.models.fewshot.proto import ProtoNet

    rng = np.random.default_rng(0)
    crops = np.zeros((40, 2, 32, 32), np.float32)
    crops[:, 0, 0, :2] = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(10, 0.1, (20, 2))])
    u = unknown_distance(ProtoNet(Identity()), crops, clusters=2, seed=0, percentile=100.0)
    assert 0.0 < u < 0.4


def test_transductive_prototypes_move_to_the_lab_crops():
    """Embedding = the first two pixels. Class b's one click sits off its lab cluster, near the
    middle; the pool's clusters pull each prototype to their centre, so a crop nearer cluster a
    that the plain prototypes call b is labelled right."""
    from stmwatch.models.fewshot.backbones import Conv4  # noqa: F401 (only to be sure the package imports)
    from stmwatch.models.fewshot.proto import ProtoNet

    net = ProtoNet(Identity())
    def crop(a, b):
        c = np.zeros((2, 32, 32), np.float32)
        c[0, 0, 0], c[0, 0, 1] = a, b
        return c
    support = CropSet("si001h", {"a": np.stack([crop(0.0, 1.0)]), "b": np.stack([crop(0.0, 0.2)])})  # b: off-centre
    rng = np.random.default_rng(0)
    pool = np.stack([crop(*xy) for xy in rng.normal([0.0, 1.0], 0.2, (30, 2))]
                    + [crop(*xy) for xy in rng.normal([0.0, -1.0], 0.2, (30, 2))])
    query = np.stack([crop(0.0, 0.55), crop(0.0, -0.2)])  # nearer cluster a's centre, and cluster b's
    plain = PrototypicalClassifier(net, support, float("inf"))
    assert [lab for lab, _ in plain.classify(query)] == ["b", "b"]
    trans = TransductiveClassifier(PrototypicalClassifier(net, support, float("inf")), pool, steps=5)
    protos = trans.refined_prototypes(query).numpy()
    assert np.allclose(protos[0], [0.0, 1.0], atol=0.15) and np.allclose(protos[1], [0.0, -0.9], atol=0.15)
    assert [lab for lab, _ in trans.classify(query)] == ["a", "b"]
    assert np.allclose(trans.net.prototypes.numpy(), [[0.0, 1.0], [0.0, 0.2]])  # each call starts from the clicks
    # without a pool, the crops of the call (one scan's defects) pull the prototypes the same way
    scan_only = TransductiveClassifier(PrototypicalClassifier(net, support, float("inf")), None, steps=5)
    labels = [lab for lab, _ in scan_only.classify(np.concatenate([query, pool]))]
    assert labels[:2] == ["a", "b"] and labels[2:32] == ["a"] * 30 and labels[32:] == ["b"] * 30


def test_prototypes_come_from_the_clicks_at_the_scans_polarity():
    """Embedding = the first two pixels. Class a was clicked at -1.8 V (look (0, 1)) and at +1.2 V
    (look (1, 0)); class b once, bias unknown, at (-1, -1). A scan's prototype of a is its own
    polarity's click (both, averaged, when the bias is unknown); b's click serves every scan."""
    from stmwatch.models.fewshot.proto import ProtoNet

    def crop(a, b):
        c = np.zeros((2, 32, 32), np.float32)
        c[0, 0, 0], c[0, 0, 1] = a, b
        return c
    support = CropSet("si001h", {"a": np.stack([crop(0.0, 1.0), crop(1.0, 0.0)]), "b": np.stack([crop(-1.0, -1.0)])},
                      bias_v={"a": np.array([-1.8, 1.2]), "b": np.array([np.nan])})
    assert support.polarity("a").tolist() == [-1, 1] and support.polarity("b").tolist() == [0]
    query = np.stack([crop(0.6, -0.8)])
    clf = TransductiveClassifier(PrototypicalClassifier(ProtoNet(Identity()), support, float("inf")), None, steps=0)
    assert np.allclose(clf.refined_prototypes(query, bias_v=None).numpy(), [[0.5, 0.5], [-1.0, -1.0]])
    assert np.allclose(clf.refined_prototypes(query, bias_v=2.0).numpy(), [[1.0, 0.0], [-1.0, -1.0]])
    assert np.allclose(clf.refined_prototypes(query, bias_v=-2.0).numpy(), [[0.0, 1.0], [-1.0, -1.0]])
    # squared distances of (0.6, -0.8): to (1, 0) 0.80, (0.5, 0.5) 1.70, (-1, -1) 2.60, (0, 1) 3.60
    assert [lab for lab, _ in clf.classify(query, bias_v=2.0)] == ["a"]
    assert [lab for lab, _ in clf.classify(query, bias_v=None)] == ["a"]
    assert [lab for lab, _ in clf.classify(query, bias_v=-2.0)] == ["b"]


def test_least_sure_lists_the_smallest_margins_first():
    class Fake:
        labels = ["a", "b", "c"]
        net = types.SimpleNamespace(temperature=1.0)

        def distances(self, crops, bias_v=None):
            return np.array([[0.0, 5.0, 9.0], [1.0, 1.1, 9.0], [2.0, 1.0, 3.0]])  # gaps 1, 0.05, 0.33

    defects = [types.SimpleNamespace(row=float(i), col=0.0, label="x", crop=np.zeros((2, 32, 32))) for i in range(3)]
    rows = least_sure(types.SimpleNamespace(defects=defects), Fake(), n=2)
    assert [r["row"] for r in rows] == [1.0, 2.0]
    assert rows[0]["nearest"] == "a" and rows[0]["second"] == "b" and rows[1]["nearest"] == "b"
    assert rows[0]["margin"] == pytest.approx(0.1 / 2.1, abs=1e-4) and rows[1]["margin"] == pytest.approx(1 / 3, abs=1e-4)


class _TruthLabels:
    """The first scans' truth as adapt's 'confident output' (the tiny UNet knows nothing)."""

    name = "truth-for-test"

    def __init__(self, *args):
        pass

    def labels(self, path, prepared):
        from stmwatch.models.sim.simulate import read_truth

        truth = read_truth(path)
        r, c = prepared.from_scan(np.array([d.row for d in truth.defects]), np.array([d.col for d in truth.defects]))
        return PseudoLabels(np.stack([r, c], 1).reshape(-1, 2), ~prepared.valid)


@pytest.fixture()
def tiny_setup(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(UNet(UNetConfig(width=4, depth=2)), tmp_path / "tiny.pt")
    scans = tmp_path / "scans"
    for i in range(8):
        scan, truth = simulate_scan("si001h", 60 + i, pixels=(96, 96), n_defects=8)
        write_example(scan, truth, scans / f"s{i}")
    config = Config(models=ModelSettings(segmenter_weights=str(tmp_path / "tiny.pt"), backend="torch",
                                         test_time_flips=1, surface_thresholds={}, threshold=0.5),
                    preprocess=PreprocessSettings())
    return tmp_path, scans, config


def test_adapt_writes_a_bundle_that_loads_and_keeps_the_held_back_scans_out(tiny_setup, monkeypatch):
    tmp_path, scans, config = tiny_setup
    # the tiny UNet knows nothing: make its 'confident output' the first scans' truth, so there are labels
    from stmwatch.models import adapt as adapt_module
    from stmwatch.models.sim.simulate import read_truth

    monkeypatch.setitem(adapt_module.LABEL_SOURCES, "truth", _TruthLabels)
    stages = []
    settings = AdaptSettings(steps=3, batch=2, patch=32)
    figures = adapt(scans, "si001h", tmp_path / "bundle", config, label_source="truth", settings=settings,
                    progress=lambda stage, done, total: stages.append(stage))
    assert {"labels", "unet", "embedding", "card"} <= set(stages)
    bundle = load_bundle(tmp_path / "bundle")
    assert figures["bundle"] == bundle.id and bundle.unet and bundle.classifier
    made = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert made["held_back"] == ["s6.sxm", "s7.sxm"] and not set(made["held_back"]) & set(made["trained_on"])
    assert figures["held_back_scans"] == 2 and "before" in figures and "after" in figures
    assert "before" in (tmp_path / "bundle" / "CARD.md").read_text()
    pool = np.load(tmp_path / "bundle" / "lab_crops.npy")
    # a crop at every labelled defect of the scans trained on, scan by scan, each with its scan's bias
    trained = [scans / name for name in made["trained_on"]]
    counts = [len(read_truth(p).defects) for p in trained]
    assert pool.shape == (sum(counts), 2, 32, 32) and sum(counts) >= 8
    pool_bias = np.load(tmp_path / "bundle" / "lab_crops_bias.npy")
    np.testing.assert_array_equal(pool_bias, np.concatenate([np.full(n, read_sxm(p).bias_v, np.float32)
                                                             for p, n in zip(trained, counts)]))
    after = dataclasses.replace(config, models=dataclasses.replace(config.models, bundle=str(tmp_path / "bundle"),
                                                                   segmenter_weights=""))
    analyser = load_analyser(after, "si001h")
    assert isinstance(analyser.classifier, TransductiveClassifier)
    assert analyser.model_versions["bundle"] == bundle.id
    # the shipped classifier's unknown gate travels in the bundle and is used from there
    assert (tmp_path / "bundle" / "fewshot_proto_conv4_gate.pt").is_file() and analyser.classifier.gate is not None
    assert analyser.classifier.crop_norm == "per_crop"
    # and so do its polarity maps: the embedding was not changed (no fine-tuning, no AdaBN)
    assert (tmp_path / "bundle" / "fewshot_polarity.npz").is_file() and sorted(analyser.classifier.polarity_maps) == [-1, 1]
    assert analyser.classifier._pool_polarity is not None and len(analyser.classifier._pool_polarity) == len(pool)
    scan, _ = simulate_scan("si001h", 99, pixels=(64, 64))
    result = analyser.analyse(scan)  # the bundle's models run on a new scan, and its record says so
    assert result.model_versions["bundle"] == bundle.id


def test_the_second_round_is_labelled_by_the_fine_tuned_unet(tiny_setup, monkeypatch):
    tmp_path, scans, config = tiny_setup
    from stmwatch.models import adapt as adapt_module
    from stmwatch.models.sim.simulate import read_truth

    teachers = []

    class Recording:
        name = "recording"

        def __init__(self, segmenter, *args):
            self.segmenter = segmenter

        def labels(self, path, prepared):
            teachers.append({k: v.clone() for k, v in self.segmenter.model.state_dict().items()})
            truth = read_truth(path)
            r, c = prepared.from_scan(np.array([d.row for d in truth.defects]), np.array([d.col for d in truth.defects]))
            return PseudoLabels(np.stack([r, c], 1).reshape(-1, 2), ~prepared.valid)

    monkeypatch.setitem(adapt_module.LABEL_SOURCES, "recording", Recording)
    monkeypatch.setattr(adapt_module, "card_figures", lambda *args: {"held_back_scans": 0})
    adapt(scans, "si001h", tmp_path / "b2", config, label_source="recording",
          settings=AdaptSettings(steps=4, batch=2, patch=32, rounds=2, lr=1e-2, adabn=True))
    assert len(teachers) == 12  # 6 training scans, labelled in each of 2 rounds
    first, second = teachers[0], teachers[6]
    assert all(torch.equal(first[k], teachers[5][k]) for k in first)  # one teacher for a round
    assert any(not torch.equal(first[k], second[k]) for k in first if first[k].is_floating_point())
    made = json.loads((tmp_path / "b2" / "config.json").read_text())
    assert made["settings"]["rounds"] == 2
    # AdaBN changed the embedding: the polarity maps, fitted for the shipped one, stay out
    assert not (tmp_path / "b2" / "fewshot_polarity.npz").exists()
    meta = torch.load(tmp_path / "b2" / "fewshot.pt", weights_only=True)["meta"]
    assert meta["adapted"]["adabn"] and not any(k.startswith("polarity_maps") for k in meta)


def test_adapt_command_refuses_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["adapt", "--surface", "si001h", "--scans", str(tmp_path / "empty"), "--out", str(tmp_path / "b")]) == 1
    assert "at least 2 .sxm" in capsys.readouterr().err


def test_mask_labels_are_the_masks_components_on_the_model_grid_and_leave_the_unets_maybes_out(tmp_path):
    """A mask with two discs (centres at scan pixels (10, 20) and (40, 30)): two defects at
    ``prepared.from_scan`` of those centres; a pixel the UNet half sees outside them is left out."""
    from stmwatch.models.adapt import MaskLabels

    mask = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for r, c in ((10, 20), (40, 30)):
        mask[(yy - r) ** 2 + (xx - c) ** 2 <= 4] = 1
    np.save(tmp_path / "scan1.mask.npy", mask)
    prepared = types.SimpleNamespace(valid=np.ones((32, 32), bool), scale=(2.0, 2.0))
    prepared.from_scan = lambda row, col: ((np.asarray(row) + 0.5) / 2.0 - 0.5, (np.asarray(col) + 0.5) / 2.0 - 0.5)
    prob = np.zeros((32, 32))
    prob[25, 5] = 0.3  # half seen by the UNet, not in the mask
    unet = types.SimpleNamespace(probability=lambda p: prob)
    labels = MaskLabels(tmp_path, unet, unsure_low=0.1).labels(tmp_path / "scan1.sxm", prepared)
    np.testing.assert_allclose(labels.centres, [[4.75, 9.75], [19.75, 14.75]])
    assert labels.unsure[25, 5] and labels.unsure.sum() == 1


def test_adapt_learns_from_autolabel_masks_in_one_round_and_names_a_missing_mask(tiny_setup):
    tmp_path, scans, config = tiny_setup
    from stmwatch.models.sim.simulate import read_truth

    from scipy import ndimage

    def disc_mask(path):  # what autolabel writes: a small disc per defect (here at the truth)
        mask = np.zeros((96, 96), np.uint8)
        for d in read_truth(path).defects:
            mask[max(0, round(d.row) - 1):round(d.row) + 2, max(0, round(d.col) - 1):round(d.col) + 2] = 1
        return mask
    masks = tmp_path / "labels"
    masks.mkdir()
    paths = sorted(scans.glob("*.sxm"))
    for path in paths[:5]:  # s5 (a training scan: s6, s7 are held back) has none yet
        np.save(masks / f"{path.stem}.mask.npy", disc_mask(path))
    settings = AdaptSettings(steps=3, batch=2, patch=32, rounds=2)
    with pytest.raises(ValueError, match=r"s5\.sxm: no mask"):
        adapt(scans, "si001h", tmp_path / "b", config, label_source=str(masks), settings=settings)
    assert not (tmp_path / "b").exists()
    np.save(masks / "s5.mask.npy", np.zeros((95, 96), np.uint8))
    with pytest.raises(ValueError, match=r"s5\.sxm: mask of shape \(95, 96\), the scan is \(96, 96\)"):
        adapt(scans, "si001h", tmp_path / "b", config, label_source=str(masks), settings=settings)
    np.save(masks / "s5.mask.npy", disc_mask(paths[5]))
    figures = adapt(scans, "si001h", tmp_path / "b", config, label_source=str(masks), settings=settings)
    made = json.loads((tmp_path / "b" / "config.json").read_text())
    assert made["label_source"] == "autolabel-masks" and made["trained_on"] == [p.name for p in paths[:6]]
    meta = torch.load(tmp_path / "b" / "unet.pt", weights_only=False)["meta"]["adapted"]
    assert meta["rounds"] == 1 and meta["label_source"] == "autolabel-masks"
    components = sum(ndimage.label(np.load(masks / f"{p.stem}.mask.npy"), np.ones((3, 3)))[1] for p in paths[:6])
    assert figures["crops"] == len(np.load(tmp_path / "b" / "lab_crops.npy")) == components > 30  # a crop per component
    with pytest.raises(ValueError, match="unknown label source 'nowhere'"):
        adapt(scans, "si001h", tmp_path / "c", config, label_source="nowhere", settings=settings)


def test_adapt_skips_a_bad_scan_and_a_failed_run_leaves_the_bundle_as_it_was(tiny_setup, monkeypatch):
    """Found by a review (stop 33): one bad file stopped adapt, and a run that failed after training
    left a bundle without its card where the lab's previous one had been."""
    tmp_path, scans, config = tiny_setup
    from stmwatch.models import adapt as adapt_module

    monkeypatch.setitem(adapt_module.LABEL_SOURCES, "truth", _TruthLabels)
    (scans / "zz_aborted.sxm").write_bytes(b"")  # last by name: it would have been a held-back scan
    settings = AdaptSettings(steps=3, batch=2, patch=32)
    adapt(scans, "si001h", tmp_path / "b", config, label_source="truth", settings=settings)
    made = json.loads((tmp_path / "b" / "config.json").read_text())
    assert made["held_back"] == ["s6.sxm", "s7.sxm"] and "zz_aborted.sxm" not in made["scans"]
    assert len(made["skipped"]) == 1 and "zz_aborted.sxm" in made["skipped"][0]
    first = load_bundle(tmp_path / "b")

    def failing_card(held, *args):  # fails after the training, once the bundle's files are written
        raise ValueError(f"{held[0]}: every pixel is NaN")

    monkeypatch.setattr(adapt_module, "card_figures", failing_card)
    with pytest.raises(ValueError, match="every pixel is NaN"):
        adapt(scans, "si001h", tmp_path / "b", config, label_source="truth", settings=dataclasses.replace(settings, seed=1))
    assert load_bundle(tmp_path / "b").id == first.id  # the lab's bundle, whole and unchanged
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")) == []


def test_adapt_refuses_an_out_that_is_no_bundle_and_a_support_that_is_no_support_set_before_any_work(tiny_setup):
    tmp_path, scans, config = tiny_setup
    settings = AdaptSettings(steps=3, batch=2, patch=32)
    with pytest.raises(ValueError, match="no model bundle"):
        adapt(scans, "si001h", scans, config, settings=settings)  # the scans' own folder as --out
    (tmp_path / "nosupport").mkdir()
    with pytest.raises(ValueError, match="--support .*nosupport: not a folder of class folders"):
        adapt(scans, "si001h", tmp_path / "b", config, support=tmp_path / "nosupport", settings=settings)
    assert not (tmp_path / "b").exists()


def test_mask_labels_refuse_masks_made_from_another_file_or_surface(tiny_setup):
    """The masks' manifest says what each mask was made from: masks of another day's scans of the
    same names, or of another surface, are named before any work."""
    tmp_path, scans, config = tiny_setup
    from stmwatch.models.adapt import MaskLabels

    other = tmp_path / "other_day"
    scan, truth = simulate_scan("si001h", 500, pixels=(96, 96), n_defects=8)
    write_example(scan, truth, other / "s0")
    masks = tmp_path / "labels"
    masks.mkdir()
    paths = sorted(scans.glob("*.sxm"))[:2]
    for path in paths:
        np.save(masks / f"{path.stem}.mask.npy", np.zeros((96, 96), np.uint8))
    manifest = {"s0": {"scan": str((other / "s0.sxm").resolve()), "surface": "si001h"},
                "s1": {"scan": str(paths[1].resolve()), "surface": "ge001"}}
    (masks / "autolabel.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as err:
        MaskLabels(masks, None, 0.1).check(paths, [read_sxm(p) for p in paths], "si001h")
    assert "s0.sxm: its mask was made from another file" in str(err.value)
    assert "s1.sxm: its mask was made for ge001, not si001h" in str(err.value)
    manifest["s0"]["scan"], manifest["s1"]["surface"] = str(paths[0]), "si001h"
    (masks / "autolabel.json").write_text(json.dumps(manifest))
    MaskLabels(masks, None, 0.1).check(paths, [read_sxm(p) for p in paths], "si001h")  # the right masks pass


def test_a_card_with_one_held_back_scan_says_why_it_has_no_one_click_figures(tiny_setup, monkeypatch):
    """Found by a new-user walkthrough (stop 34): 4 scans with truth hold back 1, too few to click
    in one and score another; the card said it showed one-click figures and showed none, unexplained."""
    tmp_path, scans, config = tiny_setup
    from stmwatch.models import adapt as adapt_module

    for extra in sorted(scans.glob("s[4-7].*")):
        extra.unlink()
    monkeypatch.setitem(adapt_module.LABEL_SOURCES, "truth", _TruthLabels)
    figures = adapt(scans, "si001h", tmp_path / "bundle", config, label_source="truth",
                    settings=AdaptSettings(steps=2, batch=2, patch=32))
    assert figures["held_back_scans"] == 1 and figures["with_truth"] and "label_accuracy" not in figures["before"]
    card = (tmp_path / "bundle" / "CARD.md").read_text()
    assert "no one-click figures: 1 held-back scan, at least 2 are needed" in card
