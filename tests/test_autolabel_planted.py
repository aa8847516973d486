"""The planted-defect detector (models/autolabel/planted.py): planting, the noise scale, the masks
from a detector's defects, and `stmwatch autolabel --method planted` end to end (a tiny training)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from stmwatch.models.autolabel.evaluate import mask_centroids
from stmwatch.models.autolabel.planted import (PlantSettings, detector_mask, draw_ghost, plant_defects, plant_settings,
                                               planted_patches, residual_spread)
from stmwatch.models.defects import Defect
from stmwatch.models.preprocess import Prepared
from stmwatch.models.sim.simulate import simulate_scan, write_example


def test_residual_spread_of_white_noise_is_its_smoothed_spread():
    """White noise of spread 1, smoothed by a Gaussian of sigma 2 px (0.2 nm at 0.1 nm/px), has
    spread 1 / (2 sqrt(pi) 2) = 0.141 (the 1.2 nm high-pass takes out a little more)."""
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (2, 256, 256)).astype(np.float32)
    spread = residual_spread(image, np.ones((256, 256), bool))
    assert 0.12 < spread < 0.145
    assert residual_spread(3 * image, np.ones((256, 256), bool)) == pytest.approx(3 * spread, rel=1e-3)


def test_planted_defects_are_where_it_says_with_their_heights():
    settings = PlantSettings(rate=12, amplitude=(4, 4), sigma_nm=(0.2, 0.2), max_aspect=1.0)
    image = np.zeros((2, 96, 96), np.float32)
    valid = np.ones((96, 96), bool)
    valid[:, :30] = False  # no data on the left: nothing is planted there
    avoid = np.array([[48.0, 70.0]])
    out, centres = plant_defects(image, valid, 0.5, np.random.default_rng(1), settings, avoid=avoid)
    assert image.max() == 0  # the input is not changed
    assert len(centres) >= 5
    assert np.allclose(out[0], out[1])  # both channels alike
    for r, c in centres:
        assert valid[int(round(r)), int(round(c))]
        assert abs(out[0, int(round(r)), int(round(c))]) == pytest.approx(2.0, rel=0.15)  # 4 x 0.5, sign +-
    gaps = np.hypot(*(np.concatenate([centres, avoid])[:, None] - np.concatenate([centres, avoid])[None]).T)
    assert gaps[~np.eye(len(gaps), dtype=bool)].min() >= 10 - 1e-9  # 1 nm apart, and from the known defect
    # far from every centre (more than 4 sigmas) the image is untouched
    rows, cols = np.indices((96, 96))
    far = np.min([np.hypot(rows - r, cols - c) for r, c in centres], axis=0) > 8
    assert np.abs(out[0][far]).max() < 0.05


@pytest.mark.parametrize("surface, top", [("si001h", 40.0), ("ge001", 40.0), ("tio2110", 12.0)])
def test_default_planted_heights_span_the_surfaces_range_of_noise_spreads(surface, top):
    """The default heights (stop 27: 2-40 times the noise scale; TiO2(110) keeps stop 23's 2-12;
    docs/autolabel.md): each bump's peak, spread out so that no two overlap, lies in that range,
    both ends reached."""
    settings = plant_settings(surface, sigma_nm=(0.5, 0.5), max_aspect=1.0, min_separation_nm=5.0)
    assert settings.amplitude == (2.0, top)
    image, valid = np.zeros((2, 480, 480), np.float32), np.ones((480, 480), bool)
    out, centres = plant_defects(image, valid, 0.25, np.random.default_rng(3), settings)
    peaks = np.array([abs(out[0, int(round(r)), int(round(c))]) for r, c in centres]) / 0.25
    assert len(peaks) >= 30
    assert peaks.min() >= 2.0 * 0.99 and peaks.max() <= top  # the pixel nearest a centre: within 1 % of its peak
    assert peaks.min() < 3.0 and peaks.max() > 0.66 * top


def test_a_surfaces_planting_and_epochs_come_with_changes_on_top():
    """``plant_settings``: the defaults, a surface's own values over them, then the caller's."""
    assert plant_settings("ge001") == PlantSettings()
    assert (PlantSettings().epochs, PlantSettings().sigma_nm) == (40, (0.15, 0.7))
    tio2 = plant_settings("tio2110", steps=7)
    assert (tio2.epochs, tio2.sigma_nm, tio2.amplitude, tio2.steps) == (20, (0.15, 0.5), (2.0, 12.0), 7)
    assert plant_settings("tio2110", epochs=3).epochs == 3


def test_a_double_tip_copies_each_planted_bump_fainter_and_leaves_pits_single():
    settings = PlantSettings(rate=6, amplitude=(4, 4), sigma_nm=(0.2, 0.2), max_aspect=1.0)
    image, valid = np.zeros((1, 96, 96), np.float32), np.ones((96, 96), bool)
    single, centres = plant_defects(image, valid, 0.5, np.random.default_rng(3), settings)
    double, same = plant_defects(image, valid, 0.5, np.random.default_rng(3), settings, ghost=(12.0, -6.0, 0.75))
    assert np.array_equal(centres, same)  # the copies are not defects: the centres are the bumps'
    copies = (double - single)[0]
    bumps = [(int(round(r)), int(round(c))) for r, c in centres if single[0, int(round(r)), int(round(c))] > 0]
    assert bumps and len(bumps) < len(centres)  # both signs planted
    for r, c in bumps:
        if 0 <= r + 12 < 96 and 0 <= c - 6 < 96:
            assert copies[r + 12, c - 6] == pytest.approx(0.75 * 2.0, rel=0.1)  # 0.75 x (4 x 0.5)
    rows, cols = np.indices((96, 96))
    near_copy = np.min([np.hypot(rows - r - 12, cols - c + 6) for r, c in bumps], axis=0) <= 8
    assert np.abs(copies[~near_copy]).max() < 0.05  # nothing added anywhere else: the pits have no copy


def test_a_double_tips_copy_of_an_elongated_bump_is_the_same_bump_shifted():
    settings = PlantSettings(rate=0.4, amplitude=(4, 4), sigma_nm=(0.4, 0.5), max_aspect=2.5)
    image, valid = np.zeros((1, 96, 96), np.float32), np.ones((96, 96), bool)
    for seed in range(200):  # a draw with one bump in the middle
        single, centres = plant_defects(image, valid, 0.5, np.random.default_rng(seed), settings)
        if len(centres) == 1 and single.max() > 0 and (np.abs(centres[0] - 40) < 10).all():
            break
    else:
        pytest.fail("no single central bump drawn")
    double, _ = plant_defects(image, valid, 0.5, np.random.default_rng(seed), settings, ghost=(12.0, -6.0, 0.75))
    shifted = np.roll(single[0], (12, -6), axis=(0, 1))  # the bump moved by the double tip's offset
    assert np.allclose(double[0] - single[0], 0.75 * shifted, atol=1e-5)


def test_draw_ghost_draws_nothing_when_off_and_a_double_tip_in_range_when_on():
    rng = np.random.default_rng(0)
    assert draw_ghost(rng, PlantSettings(ghost_share=0.0)) is None
    assert rng.random() == np.random.default_rng(0).random()  # the stream untouched: planting as before
    for seed in range(20):
        rows, cols, ratio = draw_ghost(np.random.default_rng(seed), PlantSettings(ghost_share=1.0))
        assert 6.0 <= np.hypot(rows, cols) <= 20.0  # 0.6-2.0 nm at 0.1 nm per model pixel
        assert 0.6 <= ratio <= 0.95


def test_planted_patches_target_planted_and_known_defects():
    settings = PlantSettings(rate=3, patch=64, per_scan=2, copies=2)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (2, 128, 128)).astype(np.float32)
    known = np.array([[40.0, 40.0], [100.0, 90.0]])
    prepared = Prepared(image, np.ones((128, 128), bool), (1.0, 1.0), "ge001")
    patches = planted_patches(prepared, known, rng, settings)
    assert patches.images.shape == (4, 2, 64, 64) and patches.targets.shape == (4, 64, 64)
    for target, centres in zip(patches.targets, patches.centres):
        for r, c in centres:
            assert target[int(round(r)), int(round(c))] == 1
        disc = np.pi * (settings.disc_nm / 0.1) ** 2
        assert target.sum() <= len(centres) * (disc + 8)
    # the two copies of a place share its known defects but not the planted ones
    assert not np.array_equal(patches.images[0], patches.images[1])


def test_detector_mask_keeps_the_confident_defects_as_discs_at_their_places():
    scan, _ = simulate_scan("ge001", 3, pixels=(96, 96), n_defects=5)  # 0.1 nm per pixel or so
    found = [Defect(20.2, 30.4, 0, 0, 9, 0.9), Defect(60.0, 70.0, 0, 0, 9, 0.75), Defect(40, 50, 0, 0, 9, 0.3)]
    mask, kept = detector_mask(scan, lambda _scan: found, confident=0.7)
    assert [d.score for d in kept] == [0.9, 0.75]
    assert mask.shape == scan.shape and mask.dtype == np.uint8
    centres = mask_centroids(mask)
    assert len(centres) == 2
    assert np.allclose(sorted(map(tuple, np.round(centres))), [(20, 30), (60, 70)], atol=1)
    px_nm = scan.pixel_size_m[0] * 1e9
    assert mask.sum() <= 2 * (np.pi * (0.2 / px_nm + 1) ** 2)


def test_detector_mask_discs_follow_non_square_pixels():
    """0.05 nm wide, 0.1 nm high pixels: a 0.2 nm disc spans 9 columns and 5 rows."""
    import dataclasses

    scan, _ = simulate_scan("ge001", 3, pixels=(96, 96), n_defects=5)
    scan = dataclasses.replace(scan, range_m=(96 * 0.05e-9, 96 * 0.1e-9))
    mask, _ = detector_mask(scan, lambda _scan: [Defect(40, 50, 0, 0, 9, 0.9)], confident=0.7)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (38, 42, 46, 54)


def test_the_detector_runs_with_the_ghost_handling_for_both_copies_and_its_confidence(tmp_path):
    """The detector never saw a double tip and marks both copies alike: its segmenter takes the
    double tip's side from the copies' strength ("pairs"), and leaves out unconfident components."""
    from stmwatch.models.autolabel import CONFIDENT
    from stmwatch.models.autolabel.planted import detector_segmenter
    from stmwatch.models.unet import UNet, UNetConfig, save_checkpoint

    path = save_checkpoint(UNet(UNetConfig(width=4, depth=2)), tmp_path / "detector.pt")
    segmenter = detector_segmenter(path, "si001h").__self__
    assert (segmenter.ghost_method, segmenter.min_score, segmenter.remove_ghosts) == ("pairs", CONFIDENT, True)
    assert detector_segmenter(path, "si001h", 0.6).__self__.min_score == 0.6


def test_several_detectors_give_the_mean_of_their_probabilities(tmp_path):
    """Two detectors (files, or the folder ``autolabel`` trains them into) are one segmenter whose
    probability is the mean of each one's own, pixel by pixel."""
    from stmwatch.models.autolabel.planted import detector_paths, detector_segmenter
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.sim.simulate import simulate_scan
    from stmwatch.models.unet import UNet, UNetConfig, save_checkpoint

    paths = []
    for i in range(2):
        torch.manual_seed(i)
        (tmp_path / f"member{i}").mkdir()
        paths.append(save_checkpoint(UNet(UNetConfig(width=4, depth=2)), tmp_path / f"member{i}" / "best.pt"))
    assert detector_paths(tmp_path) == paths and detector_paths(paths[0]) == [paths[0]]
    for name in ("member10", "member2", "member0_old"):  # members in the order of their number; others ignored
        (tmp_path / name).mkdir()
        save_checkpoint(UNet(UNetConfig(width=4, depth=2)), tmp_path / name / "best.pt")
    assert [p.parent.name for p in detector_paths(tmp_path)] == ["member0", "member1", "member2", "member10"]
    for name in ("member10", "member2", "member0_old"):
        shutil.rmtree(tmp_path / name)
    with pytest.raises(ValueError, match="no planted-defect detector"):
        detector_segmenter([], "si001h")
    scan, _ = simulate_scan("si001h", 3, pixels=(64, 64), n_defects=3)
    singles = [detector_segmenter(p, "si001h").__self__ for p in paths]
    pair = detector_segmenter(tmp_path, "si001h").__self__
    prepared = prepare(scan, pair.surface, pair.preprocess)
    own = [s.probability(prepared) for s in singles]
    assert not np.allclose(own[0], own[1])  # two different networks
    assert np.allclose(pair.probability(prepared), (own[0] + own[1]) / 2, atol=1e-6)
    assert np.allclose(detector_segmenter(paths, "si001h").__self__.probability(prepared), (own[0] + own[1]) / 2, atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no best.pt nor member"):
        detector_paths(tmp_path / "empty")


def test_command_trains_a_detector_labels_with_it_and_reuses_it(tmp_path, capsys, monkeypatch):
    from stmwatch.daemon.cli import main
    from stmwatch.models.autolabel.training import labelled_patches
    from stmwatch.models.unet import load_checkpoint

    scans = tmp_path / "scans"
    for seed in (1, 2, 3):
        scan, truth = simulate_scan("tio2110", seed, pixels=(96, 96), n_defects=5)
        write_example(scan, truth, scans / f"s{seed}.sxm")
    out = tmp_path / "labels"
    args = ["autolabel", str(scans), "--surface", "tio2110", "--out", str(out), "--k", "6", "--epochs", "1",
            "--steps", "2", "--png"]
    assert main(args) == 0
    manifest = json.loads((out / "autolabel.json").read_text())
    assert sorted(manifest) == ["s1", "s2", "s3"]
    assert {e["method"] for e in manifest.values()} == {"planted"}
    detector = out / "detector"  # the default: two detectors, from seeds 0 and 1, averaged
    members = [detector / "member0" / "best.pt", detector / "member1" / "best.pt"]
    for seed, member in enumerate(members):
        model, state = load_checkpoint(member)
        assert state["meta"]["name"] == "planted-detector" and state["meta"]["plant"]["steps"] == 2
        assert state["meta"]["plant"]["seed"] == seed
        assert state["meta"]["round"] == 2  # the default: a second round on the first detector's defects
        assert (member.parent / "round1" / "best.pt").exists()
    assert sorted(p.name for p in detector.iterdir()) == ["member0", "member1"]
    # trained again into the same folder with one detector: the earlier members are gone, so that
    # reusing the folder finds this run's detector alone
    assert main([*args[:5], str(out), "--k", "6", "--epochs", "1", "--steps", "2", "--detectors", "1"]) == 0
    assert sorted(p.name for p in detector.iterdir()) == ["best.pt", "round1", "round2"]
    assert main(args) == 0  # and back to two
    assert (out / "s1.autolabel.png").stat().st_size > 0
    for stem in manifest:
        mask = np.load(out / f"{stem}.mask.npy")
        assert mask.shape == (96, 96) and mask.dtype == np.uint8
    labelled_patches(out, patch=96, radius_px=4.0)  # the training loader reads them
    # an existing detector is used as it is: nothing is trained, and without --png nothing is clustered
    again = tmp_path / "again"

    def no_clustering(*_args, **_kwargs):
        raise AssertionError("k-means ran although a detector was given")

    monkeypatch.setattr("stmwatch.models.autolabel.command.cluster_label", no_clustering)
    assert main([*args[:5], str(again), "--detector", str(detector)]) == 0
    monkeypatch.undo()
    assert not (again / "detector").exists()
    reused = json.loads((again / "autolabel.json").read_text())
    assert reused["s1"]["detector"] == [str(m.resolve()) for m in members] and reused["s1"]["method"] == "planted"
    for stem in manifest:  # the same detector, the same masks as when it was trained
        assert np.array_equal(np.load(again / f"{stem}.mask.npy"), np.load(out / f"{stem}.mask.npy"))
        assert reused[stem]["defects"] == manifest[stem]["defects"]
    labelled_patches(again, patch=96, radius_px=4.0)
    assert main([*args[:5], str(again), "--detector", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    # a detector that cannot be loaded: one clear line, before any work (since stop 33; until then the
    # scans were clustered first and got the cluster rule's masks)
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    fallback = tmp_path / "fallback"
    assert main([*args[:5], str(fallback), "--detector", str(broken)]) == 2
    assert "broken.pt: not a stmwatch checkpoint" in capsys.readouterr().err
    assert not fallback.exists()


def test_reusing_a_detector_skips_bad_files_and_falls_back_per_scan(tmp_path, capsys, monkeypatch):
    """``--detector`` without ``--png`` (no clustering): a file that cannot be read is one line and
    skipped; a scan the detector fails on gets the cluster rule's mask, with one line; exit code 2."""
    from stmwatch.daemon.cli import main
    from stmwatch.models.autolabel import planted
    from stmwatch.models.unet import UNet, UNetConfig, save_checkpoint

    scans = tmp_path / "scans"
    for seed in (1, 2):
        scan, truth = simulate_scan("tio2110", seed, pixels=(96, 96), n_defects=5)
        write_example(scan, truth, scans / f"s{seed}.sxm")
    (scans / "broken.sxm").write_bytes(b":NANONIS_VERSION:\n2\n:SCAN_PIXELS:\n")  # a header cut short
    detector = save_checkpoint(UNet(UNetConfig(width=PlantSettings().width, depth=3)), tmp_path / "detector.pt")
    real_mask = planted.detector_mask

    def fails_on_s2(scan, segment, confident=0.7, disc_nm=0.2):
        if scan.name.startswith("s2"):
            raise RuntimeError("out of memory")
        return real_mask(scan, segment, confident, disc_nm)

    monkeypatch.setattr(planted, "detector_mask", fails_on_s2)
    out = tmp_path / "labels"
    assert main(["autolabel", str(scans), "--surface", "tio2110", "--out", str(out), "--k", "6",
                 "--detector", str(detector)]) == 2
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("broken.sxm") == 1  # the progress bar's console prints it
    err = captured.err
    assert "s2.sxm: the detector failed (out of memory)" in err
    assert "2 of 3 scans labelled" in err and "1 skipped" in err
    manifest = json.loads((out / "autolabel.json").read_text())
    assert sorted(manifest) == ["s1", "s2"]
    assert manifest["s1"]["method"] == "planted" and manifest["s2"]["method"] == "clusters"
    assert manifest["s1"]["surface"] == manifest["s2"]["surface"] == "tio2110"
    for stem in ("s1", "s2"):
        assert np.load(out / f"{stem}.mask.npy").shape == (96, 96)
