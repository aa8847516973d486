"""Auto-labelling: k-means, multi-resolution clusters, masks through the training loader,
TorchScript features, the command on real and bad files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stmwatch.models.autolabel.evaluate import mask_centroids
from stmwatch.models.autolabel.features import FilterBank, TorchScriptFeatures, make_features
from stmwatch.models.autolabel.kmeans import assign, kmeans
from stmwatch.models.autolabel.label import autolabel, cluster_map, grow, shrink
from stmwatch.models.sim.simulate import simulate_scan, write_example

from .conftest import bad_files


def test_kmeans_recovers_planted_clusters():
    rng = np.random.default_rng(0)
    planted = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0], [5.0, 5.0, 5.0]])
    truth = rng.integers(0, 4, 3000)
    x = planted[truth] + rng.normal(0, 0.5, (3000, 3))
    centres, labels = kmeans(x, 4, seed=1, sample=1000)
    # each found cluster is one planted cluster: the contingency table is a permutation
    table = np.zeros((4, 4), int)
    np.add.at(table, (truth, labels), 1)
    assert (table.max(axis=1) == np.bincount(truth, minlength=4)).all()
    assert sorted(table.argmax(axis=1)) == [0, 1, 2, 3]
    order = table.argmax(axis=0)  # planted cluster of each found one
    assert np.abs(centres - planted[order]).max() < 0.1
    assert (assign(x, centres) == labels).all()


def _two_domains(size: int = 192, period: float = 24.0) -> tuple[np.ndarray, np.ndarray]:
    """A (2, H, W) image: rows at +45 degrees on the left half, at -45 on the right (two domains
    whose rows turn by 90 degrees, as 2x1 / 1x2 on Si(001); diagonal, so that the preprocessing's
    line alignment leaves both alone), with noise; and the left-half mask."""
    rr, cc = np.mgrid[0:size, 0:size].astype(float)
    left = cc < size // 2
    rows = np.where(left, np.cos(2 * np.pi * (rr + cc) / (period * 2**0.5)), np.cos(2 * np.pi * (rr - cc) / (period * 2**0.5)))
    image = rows + np.random.default_rng(3).normal(0, 0.2, rows.shape)
    return np.stack([image, image]).astype(np.float32), left


def _agreement(labels: np.ndarray, left: np.ndarray) -> float:
    """Share of the pixels (away from the domain border) where two clusters follow the halves."""
    inner = np.abs(np.arange(left.shape[1]) - left.shape[1] // 2) > 12
    agree = ((labels == 0) == left)[:, inner].mean()
    return max(agree, 1 - agree)


def test_low_resolution_splits_two_planted_domains():
    from stmwatch.drivers.scan import Channel, Scan

    image, left = _two_domains()
    valid = np.ones(left.shape, bool)
    small, ok = shrink(image, valid, 4)
    coarse, _ = cluster_map(FilterBank(edges=True, texture=True, soft=1.0)(small, ok), ok, 2)
    assert _agreement(grow(coarse, 4, left.shape), left) > 0.95
    # at the model scale, two clusters split the rows' crests from their troughs, not the domains
    fine, _ = cluster_map(FilterBank()(image, valid), valid, 2)
    assert _agreement(fine, left) < 0.75
    # the same through autolabel: its 1/4-resolution map is the domains
    z = (image[0] * 1e-10).astype(np.float32)  # display frame (rows, columns)
    scan = Scan(channels=[Channel("Z", "m", z, z, index=0)], pixels=(192, 192), range_m=(19.2e-9, 19.2e-9))
    result = autolabel(scan, "si001h", k=2, scales=(1, 4), remove_ghosts=False)
    assert _agreement(result.clusters[1], left) > 0.95


def test_autolabel_mask_shape_frame_and_truth(tmp_path):
    scan, truth = simulate_scan("si001h", 5, pixels=(96, 80), n_defects=6)
    result = autolabel(scan, "si001h", k=6)
    assert result.mask.shape == scan.shape and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 1}
    assert len(result.clusters) == 2 and all(c.shape == result.model_mask.shape for c in result.clusters)
    # user's choice of clusters replaces the rule
    chosen = autolabel(scan, "si001h", k=6, defect_clusters=[0])
    assert chosen.defect_clusters == (0,)
    with pytest.raises(ValueError, match="do not exist"):
        autolabel(scan, "si001h", k=6, defect_clusters=[9])


def test_masks_round_trip_through_the_training_loader(tmp_path):
    from stmwatch.daemon.cli import main
    from stmwatch.models.autolabel.training import labelled_patches

    scans = tmp_path / "scans"
    for seed in (1, 2):
        scan, truth = simulate_scan("ge001", seed, pixels=(96, 96), n_defects=5)
        write_example(scan, truth, scans / f"s{seed}.sxm")
    out = tmp_path / "labels"
    assert main(["autolabel", str(scans), "--surface", "ge001", "--out", str(out), "--k", "6", "--png",
                 "--method", "clusters"]) == 0
    manifest = json.loads((out / "autolabel.json").read_text())
    assert sorted(manifest) == ["s1", "s2"] and (out / "s1.autolabel.png").stat().st_size > 0
    # replace the auto-labels with planted masks: the loader must put discs at their centroids
    planted = {"s1": [(20, 30), (60, 70)], "s2": [(40, 50)]}
    for stem, points in planted.items():
        mask = np.zeros((96, 96), np.uint8)
        for r, c in points:
            mask[r - 2:r + 3, c - 2:c + 3] = 1
        np.save(out / f"{stem}.mask.npy", mask)
    train, val, surfaces = labelled_patches(out, patch=96, radius_px=3.0)
    assert surfaces == ["ge001"]
    # 96 px at 0.1 nm/px is the model grid itself: centres stay where they were planted
    found = sorted(tuple(np.round(c).astype(int)) for c in np.concatenate(train.centres) if len(c))
    assert found and set(found) <= {(20, 30), (60, 70)}
    for image_target, centres in zip(train.targets, train.centres):
        for r, c in centres:
            assert image_target[int(round(r)), int(round(c))] == 1
        assert image_target.sum() <= len(centres) * np.pi * 4**2
    assert all(tuple(np.round(c).astype(int)) == (40, 50) for cs in val.centres for c in cs)


def test_mask_centroids():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:5, 3:6] = 1
    mask[10:12, 10:14] = 1
    assert np.allclose(sorted(map(tuple, mask_centroids(mask))), [(3.0, 4.0), (10.5, 11.5)])


class _Doubler(torch.nn.Module):
    """A stand-in for an exported backbone: half-resolution features whose channels mark where
    the input is above zero."""

    def forward(self, x):
        pooled = torch.nn.functional.avg_pool2d(x, 2)
        return torch.cat([(pooled > 0).float() * 10.0, -pooled], dim=1)


def test_torchscript_feature_model_given_by_path_is_used(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.jit.script(_Doubler()).save(str(path))
    features = make_features(str(path))
    assert isinstance(features, TorchScriptFeatures)
    image = np.zeros((2, 40, 40), np.float32)
    image[:, :, 20:] = 1.0  # right half bright
    valid = np.ones((40, 40), bool)
    out = features(image, valid)
    assert out.shape == (4, 40, 40)
    labels, _ = cluster_map(out, valid, 2)
    assert len(set(labels[:, :18].ravel())) == 1 and len(set(labels[:, 22:].ravel())) == 1
    assert labels[0, 0] != labels[0, -1]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript model"):
        make_features(str(bad))


def test_command_skips_bad_files_one_line_each(tmp_path, capsys):
    from stmwatch.daemon.cli import main

    bad = bad_files()[:2]
    scan, truth = simulate_scan("tio2110", 3, pixels=(64, 64), n_defects=3)
    write_example(scan, truth, tmp_path / "scans" / "good.sxm")
    code = main(["autolabel", *map(str, bad), str(tmp_path / "scans" / "good.sxm"), "--surface", "tio2110",
                 "--out", str(tmp_path / "out"), "--k", "5", "--method", "clusters"])
    assert code == 2
    err = capsys.readouterr()
    text = err.out + err.err
    for path in bad:
        assert sum(path.name in line for line in text.splitlines() if "error" in line) == 1
    assert (tmp_path / "out" / "good.mask.npy").exists()
    assert np.load(tmp_path / "out" / "good.mask.npy").shape == scan.shape


def test_unet_encoder_features_follow_the_input_grid():
    from stmwatch.models.autolabel.features import UNetEncoder

    encoder = make_features("unet")
    assert isinstance(encoder, UNetEncoder)
    image = np.random.default_rng(0).normal(size=(2, 50, 70)).astype(np.float32)  # not a multiple of 8
    out = encoder(image, np.ones((50, 70), bool))
    width = encoder.model.config.width
    assert out.shape == (width * (1 + 2 + 4), 50, 70) and np.isfinite(out).all()


def _planted_cluster_map() -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """A hand-made 200² cluster map: 0 the lattice (most pixels), 1 a big far patch (a
    contamination bump: 4 % of the pixels, farthest from the lattice), 2 ten 3×3 dots (defects:
    0.2 % of the pixels), 3 a long thin line (a scar, 0.5 %); and the centres of the four, in
    feature units: 1 farthest, then 2, then 3."""
    labels = np.zeros((200, 200), np.int64)
    labels[10:50, 10:50] = 1  # 1600 px = 4 %
    dots = [(80 + 10 * (i // 5) * 3, 20 + 30 * (i % 5)) for i in range(10)]
    for r, c in dots:
        labels[r - 1:r + 2, c - 1:c + 2] = 2
    labels[150, :] = 3  # 200 px = 0.5 %
    centres = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 12.0], [5.0, 5.0]])
    return labels, centres, dots


def test_rule_passes_over_a_cluster_too_big_for_the_budget():
    from stmwatch.models.autolabel.label import Rule, choose_defect_clusters

    labels, centres, _ = _planted_cluster_map()
    # the farthest cluster (the bump) is over the 2 % budget: passed over, the dots are taken
    assert 2 in choose_defect_clusters(labels, centres, Rule(), 0.1)
    assert 1 not in choose_defect_clusters(labels, centres, Rule(), 0.1)
    # the former rule stopped at the first cluster over the budget and found nothing
    assert choose_defect_clusters(labels, centres, Rule(skip_over_budget=False), 0.1) == ()
    # with a shape requirement the scar (one long line, no defect-sized component) is left out
    chosen = choose_defect_clusters(labels, centres, Rule(min_defect_share=0.5), 0.1)
    assert chosen == (2,)


def test_mask_keeps_defect_sized_components_at_their_places():
    from stmwatch.models.autolabel.label import Rule, defect_sized

    labels, _, dots = _planted_cluster_map()
    components, keep = defect_sized(np.isin(labels, (1, 2, 3)), Rule(), 0.1)
    kept = mask_centroids(keep[components])
    # the dots (0.09 nm²) stay, the 16 nm² bump and the 20 nm long line do not
    assert sorted(map(tuple, np.round(kept).astype(int))) == sorted(dots)


def test_a_small_frame_gets_fewer_clusters():
    """Four planted groups of feature values: 77² pixels (the smallest training scan) keep k = 32,
    a 2 nm frame (20² pixels) gets two clusters, 12² pixels one (the whole frame is the lattice)."""
    from stmwatch.models.autolabel.label import MIN_PIXELS_PER_CLUSTER

    rng = np.random.default_rng(0)
    for side, most in ((77, 32), (20, 2), (12, 1)):
        feats = rng.normal(0, 0.1, (2, side, side)) + rng.integers(0, 4, (1, side, side)) * 3.0
        labels, centres = cluster_map(feats.astype(np.float32), np.ones((side, side), bool), 32)
        assert len(centres) == min(32, max(1, side * side // MIN_PIXELS_PER_CLUSTER)) == most
        assert labels.max() < len(centres)


def test_self_training_writes_the_unets_confident_detections_as_masks_the_loader_reads(tmp_path):
    """scripts/autolabel_selftrain.py: a UNet's detections become one-pixel masks at their places."""
    import sys

    from stmwatch.drivers.sxm import write_sxm
    from stmwatch.models.autolabel.training import labelled_patches
    from stmwatch.models.defects import Defect

    from .conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import autolabel_selftrain
    finally:
        sys.path.pop(0)
    scan, _ = simulate_scan("ge001", 3, pixels=(96, 96), n_defects=5)
    path = tmp_path / "s3.sxm"
    write_sxm(scan, path)

    class Found:  # stands in for a UNet segmenter: what it finds, with a mean probability each
        version = "test"

        def segment(self, _scan):
            return [Defect(20.2, 30.4, 0, 0, 9, 0.9), Defect(60.0, 70.0, 0, 0, 9, 0.7), Defect(40, 50, 0, 0, 9, 0.3)]

    out = tmp_path / "labels"
    assert autolabel_selftrain.write_detection_masks(Found(), [path], "ge001", out, confident=0.6) == 2
    mask = np.load(out / "s3.mask.npy")
    assert mask.shape == scan.shape and mask.dtype == np.uint8
    assert sorted(map(tuple, np.argwhere(mask))) == [(20, 30), (60, 70)]  # not the unsure one
    train, val, surfaces = labelled_patches(out, patch=96, radius_px=3.0)
    assert surfaces == ["ge001"]
    found = sorted(tuple(np.round(c).astype(int)) for c in np.concatenate(train.centres + val.centres) if len(c))
    assert set(found) == {(20, 30), (60, 70)}


def _labels_at_one_place(out):
    """An ``autolabel --out`` folder by hand: two 96² Ge(001) scans, each with one auto-label at
    (20, 30) (the model grid is the scan's own here: 0.1 nm per pixel)."""
    out.mkdir()
    (out / "autolabel.json").write_text(json.dumps({s: {"surface": "ge001"} for s in ("s1", "s2")}))
    for stem, seed in (("s1", 1), ("s2", 2)):
        scan, truth = simulate_scan("ge001", seed, pixels=(96, 96), n_defects=5)
        write_example(scan, truth, out / f"{stem}.sxm")
        mask = np.zeros((96, 96), np.uint8)
        mask[18:23, 28:33] = 1
        np.save(out / f"{stem}.mask.npy", mask)
    return out


def test_planted_copies_join_the_labelled_patches_away_from_the_labels(tmp_path):
    """``train unet --labels DIR --plant``: each scan also gives planted patches, whose targets are
    the auto-labels and the planted defects (at least 1 nm from the labels), and whose images differ
    from the scan where defects were planted."""
    from stmwatch.models.autolabel.planted import PlantSettings, plant_settings
    from stmwatch.models.autolabel.training import labelled_patches

    out = _labels_at_one_place(tmp_path / "labels")
    plain, _, _ = labelled_patches(out, patch=96, radius_px=3.0)
    train, val, _ = labelled_patches(out, patch=96, radius_px=3.0, plant=PlantSettings(rate=5))  # its draws: the loader's generator
    assert (len(plain), len(train), len(val)) == (2, 6, 6)  # 2 windows, and 2 windows x 2 planted copies
    assert np.array_equal(train.images[0], plain.images[0])
    for image, target, centres in zip(train.images[2:], train.targets[2:], train.centres[2:]):
        assert any(np.allclose(c, (20, 30)) for c in centres)
        planted = np.array([c for c in centres if not np.allclose(c, (20, 30))])
        assert len(planted) and (np.hypot(*(planted - (20, 30)).T) >= 10).all()  # 1 nm = 10 model px
        for r, c in centres:
            assert target[int(round(r)), int(round(c))] == 1
        changed = np.abs(image - train.images[0]).max(axis=0)
        for r, c in planted:
            assert changed[int(round(r)), int(round(c))] > 0
        assert changed[20, 30] < changed.max() / 10  # the label's place is left alone
    # plant=True: each scan planted as its surface plants them (recorded as TiO2(110): its own heights)
    manifest = out / "autolabel.json"
    manifest.write_text(manifest.read_text().replace('"ge001"', '"tio2110"'))
    by_surface, _, _ = labelled_patches(out, patch=96, radius_px=3.0, plant=True)
    explicit, _, _ = labelled_patches(out, patch=96, radius_px=3.0, plant=plant_settings("tio2110"))
    defaults, _, _ = labelled_patches(out, patch=96, radius_px=3.0, plant=PlantSettings())
    assert len(by_surface) == 6 and np.array_equal(by_surface.images, explicit.images)
    assert not np.array_equal(by_surface.images, defaults.images)


def test_a_student_of_planted_defects_is_run_as_its_teacher(tmp_path):
    """``train unet --labels DIR`` trains with planted copies by default and writes into the
    weights that they are decoded as the auto-labeller's detector (components of mean probability
    >= 0.7, ghosts by pairs); ``load_segmenter`` applies it. ``--no-plant`` keeps the usual decoding."""
    import dataclasses

    from stmwatch.daemon.cli import main
    from stmwatch.models.autolabel import CONFIDENT
    from stmwatch.models.load import load_segmenter
    from stmwatch.models.settings import ModelSettings
    from stmwatch.models.surfaces import get_surface

    labels = _labels_at_one_place(tmp_path / "labels")
    tiny = ["--epochs", "1", "--steps", "1", "--batch", "2", "--width", "4", "--patch", "96", "--threads", "1",
            "--device", "cpu"]
    found = {}
    for name, extra in (("plant", []), ("plain", ["--no-plant"])):
        assert main(["train", "unet", "--labels", str(labels), "--out", str(tmp_path / name), *tiny, *extra]) == 0
        weights = tmp_path / name / "best.pt"
        meta = torch.load(weights, map_location="cpu", weights_only=True)["meta"]
        segmenter = load_segmenter(dataclasses.replace(ModelSettings(), segmenter_weights=str(weights),
                                                       backend="torch"), get_surface("ge001"))
        found[name] = (meta.get("decode"), segmenter.min_score, segmenter.ghost_method, meta["train_args"]["plant"])
    assert found["plant"] == ({"min_score": CONFIDENT, "ghost_method": "pairs"}, CONFIDENT, "pairs", True)
    assert found["plain"] == (None, 0.0, "image", False)
    bad = torch.load(tmp_path / "plant" / "best.pt", map_location="cpu", weights_only=True)
    bad["meta"]["decode"] = "pairs"  # not a table: refused with the file's name
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: meta 'decode'"):
        load_segmenter(dataclasses.replace(ModelSettings(), segmenter_weights=str(tmp_path / "bad.pt"),
                                           backend="torch"), get_surface("ge001"))


def test_a_student_left_at_the_defaults_is_trained_as_measured(tmp_path, monkeypatch):
    """``train unet --labels DIR`` without sizes trains the student of docs/autolabel.md (width 8,
    patches of 96, 40 epochs of 50 steps of 12; stop 27); an option given stays as given."""
    import stmwatch.models.train_unet as training  # the target imports train from it when it runs
    from stmwatch.daemon.cli import main

    labels = _labels_at_one_place(tmp_path / "labels")
    seen = []

    def fake_train(model, data, val, out, **kwargs):
        seen.append((model.config.width, data.images.shape[-1], kwargs["epochs"], kwargs["steps"], kwargs["batch"]))
        return []

    monkeypatch.setattr(training, "train", fake_train)
    common = ["train", "unet", "--labels", str(labels), "--threads", "1", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--epochs", "3", "--width", "4"]) == 0
    assert seen == [(8, 96, 40, 50, 12), (4, 96, 3, 50, 12)]


def _refused(args, capsys) -> str:
    """Run ``stmwatch autolabel ARGS``; assert it is refused (exit 2) and return its stderr."""
    from stmwatch.daemon.cli import main

    assert main(["autolabel", *map(str, args)]) == 2
    return capsys.readouterr().err


def test_command_refuses_before_any_work_what_would_lose_or_mislabel_scans(tmp_path, capsys):
    """Found by a review (stop 33): each of these ran to the end and exited 0 or 2 with wrong masks."""
    scan, truth = simulate_scan("si001h", 3, pixels=(48, 48), n_defects=2)
    for folder in ("day1", "day2"):
        write_example(scan, truth, tmp_path / folder / "scan.sxm")
    write_example(scan, truth, tmp_path / "day2" / "other.sxm")
    out = tmp_path / "out"
    common = ["--surface", "si001h", "--out", out, "--method", "clusters", "--k", "5"]
    # two scans of one name: their masks would overwrite each other
    err = _refused([tmp_path / "day1", tmp_path / "day2", *common], capsys)
    assert "day1/scan.sxm" in err and "day2/scan.sxm" in err
    # a folder without .sxm files
    (tmp_path / "empty").mkdir()
    assert "no .sxm files" in _refused([tmp_path / "empty", *common], capsys)
    # one scan's cluster numbers applied to others
    assert "--defect-clusters" in _refused([tmp_path / "day2", *common, "--defect-clusters", "1,2"], capsys)
    assert "--k" in _refused([tmp_path / "day1", *common[:-2], "--k", "0"], capsys)
    assert "--scales" in _refused([tmp_path / "day1", *common, "--scales", "0,4"], capsys)
    assert "missing.pt" in _refused([tmp_path / "day1", *common, "--features", f"unet:{tmp_path}/missing.pt"], capsys)
    assert not out.exists()  # nothing written by a refused run
    # labels of another surface in --out
    out.mkdir()
    (out / "autolabel.json").write_text(json.dumps({"x": {"scan": "x.sxm", "surface": "ge001"}}))
    assert "ge001" in _refused([tmp_path / "day1", *common], capsys)
    # a detector that is no checkpoint, or trained for another surface
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"config": {}, "state_dict": {}, "meta": {"surfaces": ["tio2110"]}}, other)
    base = [tmp_path / "day1", "--surface", "si001h", "--out", tmp_path / "out2"]
    assert "fake.pt: not a stmwatch checkpoint" in _refused([*base, "--detector", fake], capsys)
    assert "trained for tio2110, not si001h" in _refused([*base, "--detector", other], capsys)
    assert "--epochs: detector training options" in _refused([*base, "--detector", other, "--epochs", "3"], capsys)


def test_command_prints_odd_file_names_as_they_are_and_keeps_a_manifest_as_it_goes(tmp_path, capsys):
    from stmwatch.daemon.cli import main

    scan, truth = simulate_scan("si001h", 3, pixels=(48, 48), n_defects=2)
    write_example(scan, truth, tmp_path / "scans" / "good.sxm")
    bad = tmp_path / "scans" / "sample[clean] :key:.sxm"
    bad.write_bytes(b"")
    code = main(["autolabel", str(tmp_path / "scans"), "--surface", "si001h", "--out", str(tmp_path / "out"),
                 "--method", "clusters", "--k", "5"])
    assert code == 2
    captured = capsys.readouterr()
    assert "sample[clean] :key:.sxm" in captured.err and "error" not in captured.out
    manifest = json.loads((tmp_path / "out" / "autolabel.json").read_text())
    assert list(manifest) == ["good"] and not (tmp_path / "out" / "autolabel.json.partial").exists()


def test_train_on_labels_names_every_bad_entry_before_any_work(tmp_path, capsys, monkeypatch):
    """Found by a review: a truncated scan, a transposed mask, a missing scan or mask, a missing
    --labels folder and labels of two surfaces each ended in a traceback, only after the earlier
    scans were read and planted; now each is one line on stderr, exit 2, before --out is made."""
    import stmwatch.models.autolabel.training as training
    from stmwatch.daemon.cli import main
    from stmwatch.drivers.sxm import write_sxm

    monkeypatch.setattr(training, "mask_patches", lambda *a, **k: pytest.fail("training work began"))
    labels, scans, out = tmp_path / "labels", tmp_path / "scans", tmp_path / "out"
    labels.mkdir()
    scans.mkdir()
    scan, _ = simulate_scan("ge001", 1, pixels=(64, 48), n_defects=2)  # 48 rows, 64 columns
    manifest = {}
    for stem in ("good", "cut", "turned", "gone", "nomask"):
        manifest[stem] = {"scan": str(write_sxm(scan, scans / f"{stem}.sxm")), "surface": "ge001"}
        mask = np.zeros(scan.shape, np.uint8)
        if stem != "nomask":
            np.save(labels / f"{stem}.mask.npy", mask.T if stem == "turned" else mask)
    raw = (scans / "cut.sxm").read_bytes()
    (scans / "cut.sxm").write_bytes(raw[: len(raw) - 1000])
    (scans / "gone.sxm").unlink()
    (labels / "autolabel.json").write_text(json.dumps(manifest))

    def refused(folder) -> list[str]:
        assert main(["train", "unet", "--labels", str(folder), "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and not out.exists()
        lines = err.strip().splitlines()
        assert all(line.startswith("stmwatch train unet: ") for line in lines)
        return lines

    lines = refused(labels)
    assert len(lines) == 4 and not any("good" in line for line in lines)
    assert any("cut.sxm: data truncated" in line for line in lines)
    assert any("turned.mask.npy" in line and "(64, 48)" in line and "(48, 64)" in line for line in lines)
    assert any("gone.sxm" in line and "missing" in line for line in lines)
    assert any("nomask.mask.npy" in line and "missing" in line for line in lines)
    assert refused(tmp_path / "nowhere") == [f"stmwatch train unet: {tmp_path / 'nowhere'}: no such folder"]
    # labels of two surfaces: one model would be trained on both
    manifest = {"good": manifest["good"], "other": {**manifest["good"], "surface": "si001h"}}
    (labels / "autolabel.json").write_text(json.dumps(manifest))
    np.save(labels / "other.mask.npy", np.zeros(scan.shape, np.uint8))
    for stem in ("cut", "turned", "gone"):
        (labels / f"{stem}.mask.npy").unlink()
    lines = refused(labels)
    assert len(lines) == 1 and "ge001, si001h" in lines[0]


def test_preview_colours_tell_every_cluster_of_the_default_k_apart_and_from_no_data():
    from stmwatch.models.autolabel import DEFAULT_K
    from stmwatch.models.autolabel.preview import PALETTE, cluster_rgb
    from stmwatch.models.render import INVALID_GREY

    colours = {tuple(int(v) for v in c) for c in cluster_rgb(np.arange(DEFAULT_K)[None, :])[0]}
    assert len(colours) == DEFAULT_K and tuple(INVALID_GREY) not in colours
    assert np.abs(PALETTE.astype(int) - np.array(INVALID_GREY)).sum(axis=1).min() > 60  # none looks like no data
