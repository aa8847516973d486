"""The STM simulator: determinism, geometry of the truth, files, artefacts, lattice facts, CLI."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from stmwatch.daemon.cli import main
from stmwatch.drivers.sxm import read_sxm
from stmwatch.models.sim.artefacts import ARTEFACTS, NOISE_KINDS, Artefacts, apply_noise
from stmwatch.models.sim.simulate import make_crops, make_dataset, read_truth, simulate_scan, write_example
from stmwatch.models.surfaces import SURFACES, get_surface

SMALL = (96, 96)  # pixels: big enough for a few defects, small enough to be quick


def _z(scan):
    z = scan.topography()
    return z.forward, z.backward


def test_same_seed_same_scan_and_different_seed_different_scan():
    a_scan, a_truth = simulate_scan("ge001", 5, pixels=SMALL, artefacts=Artefacts.all())
    b_scan, b_truth = simulate_scan("ge001", 5, pixels=SMALL, artefacts=Artefacts.all())
    c_scan, _ = simulate_scan("ge001", 6, pixels=SMALL, artefacts=Artefacts.all())
    for fa, fb, fc in zip(_z(a_scan), _z(b_scan), _z(c_scan)):
        np.testing.assert_array_equal(fa, fb)
        assert not np.array_equal(fa, fc, equal_nan=True)
    np.testing.assert_array_equal(a_truth.mask, b_truth.mask)
    assert a_truth.defects == b_truth.defects


def test_written_files_are_byte_identical_for_the_same_seed(tmp_path):
    for name in ("a", "b"):
        scan, truth = simulate_scan("si001h", 11, pixels=(64, 48), artefacts=Artefacts.all())
        write_example(scan, truth, tmp_path / name / "ex")
    for ext in (".sxm", ".mask.npy", ".truth.json"):
        assert (tmp_path / "a" / f"ex{ext}").read_bytes() == (tmp_path / "b" / f"ex{ext}").read_bytes()


GEOMETRIES = [
    dict(angle_deg=0.0, direction="down", offset_m=(0.0, 0.0)),
    dict(angle_deg=30.0, direction="up", offset_m=(120e-9, -45e-9)),
    dict(angle_deg=-75.0, direction="down", offset_m=(-3e-7, 2e-7)),
    dict(angle_deg=90.0, direction="up", offset_m=(5e-9, 5e-9), range_nm=(12.0, 6.0)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("motion", [Artefacts.none(), Artefacts.only("drift", "creep", level=2.0)])
def test_truth_positions_round_trip_and_land_on_the_defects(geometry, motion):
    """Truth pixel → pixel_to_scanner → the truth's metres → scanner_to_pixel → the truth pixel,
    and the defect really is there: the scan minus the same scan without defects (an independent
    render) is large within a pixel or two of every truth position."""
    pixels = (120, 60) if "range_nm" in geometry else (96, 96)
    kw = dict(pixels=pixels, bias_v=-2.0, artefacts=motion, **geometry)
    scan, truth = simulate_scan("si001h", 21, n_defects=12, **kw)
    bare, bare_truth = simulate_scan("si001h", 21, n_defects=0, **kw)
    assert bare_truth.defects == [] and truth.defects
    diff = np.abs(scan.topography().forward - bare.topography().forward) * 1e9  # nm
    # outside the footprints only the defects' faint tails (at most 0.007 nm here; 0.1 nm inside): a
    # mask that is empty or off its defects fails
    assert diff[truth.mask == 0].max() < 0.02 and diff[truth.mask > 0].max() > 0.05
    px_nm = scan.pixel_size_m[0] * 1e9
    reach = max(1, int(math.ceil(0.3 / px_nm)))  # the brightest/darkest part is within 0.3 nm
    ny, nx = scan.shape
    for d in truth.defects:
        x, y = scan.pixel_to_scanner(d.row, d.col)
        assert (x, y) == pytest.approx((d.x_m, d.y_m), abs=1e-15)
        row, col = scan.scanner_to_pixel(d.x_m, d.y_m)
        assert (row, col) == pytest.approx((d.row, d.col), abs=1e-6)
        r, c = int(round(d.row)), int(round(d.col))
        window = diff[max(r - reach, 0):r + reach + 1, max(c - reach, 0):c + reach + 1]
        assert window.max() > 0.03, f"{d.cls} at ({d.row:.1f}, {d.col:.1f}): no defect there"
        assert truth.mask[r, c] == truth.classes.index(d.cls) + 1
    # and far from every defect there is nothing
    far = np.ones(scan.shape, bool)
    rows, cols = np.mgrid[0:ny, 0:nx]
    for d in truth.defects:
        far &= np.hypot(rows - d.row, cols - d.col) * px_nm > 3 * d.radius_nm + 0.5
    edge = int(3 * 1.3 / px_nm) + 1  # the tails of defects just outside the frame
    far[:edge], far[-edge:], far[:, :edge], far[:, -edge:] = False, False, False, False
    assert np.all(diff[far] < 1e-3)


def test_sxm_and_truth_read_back(tmp_path):
    scan, truth = simulate_scan("tio2110", 3, pixels=(80, 64), angle_deg=12.5, direction="up",
                                offset_m=(1e-7, 2e-8), artefacts=Artefacts.all())
    path = write_example(scan, truth, tmp_path / "ex")
    back = read_sxm(path)
    assert back.geometry() == {**scan.geometry(), "pixels": [80, 64]}
    assert back.bias_v == scan.bias_v
    assert [c.name for c in back.channels] == ["Z", "Current"]
    assert back.topography().unit == "m" and back.channel("Current").unit == "A"
    for a, b in zip(back.channels, scan.channels):
        np.testing.assert_array_equal(a.forward, b.forward)
        np.testing.assert_array_equal(a.backward, b.backward)
    t = read_truth(path)
    assert t.surface == "tio2110" and t.defects == truth.defects
    np.testing.assert_array_equal(t.mask, truth.mask)
    doc = json.loads((tmp_path / "ex.truth.json").read_text())
    assert {"cls", "row", "col", "x_m", "y_m"} <= set(doc["defects"][0])


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_mask_classes_match_the_truth(surface):
    """The mask is the footprints and nothing else: every pixel within radius_nm of a listed
    defect has its class; every other marked pixel belongs to a defect whose centre is just outside
    the frame (drawn, not listed); no two footprints overlap."""
    # no drift, creep or angle: pixel (row, col) sees the sample at (row, col) x px_nm
    scan, truth = simulate_scan(surface, 8, pixels=SMALL, n_defects=15)
    classes = get_surface(surface).classes
    assert len(truth.defects) >= 8
    assert truth.mask.dtype == np.uint8 and truth.mask.shape == scan.shape
    assert set(np.unique(truth.mask)) <= set(range(len(classes) + 1))
    px_nm = scan.pixel_size_m[0] * 1e9
    ny, nx = scan.shape
    rows, cols = np.mgrid[0:ny, 0:nx]
    eps = 1e-6  # nm: a pixel centre this close to a rim may round either way
    listed = np.zeros(scan.shape, bool)
    clearance = np.full(scan.shape, np.inf)  # nm: distance to the nearest listed footprint's rim
    for d in truth.defects:
        dist = np.hypot(rows - d.row, cols - d.col) * px_nm
        assert np.all(truth.mask[dist <= d.radius_nm - eps] == classes.index(d.cls) + 1), d  # the whole disc
        listed |= dist <= d.radius_nm + eps
        clearance = np.minimum(clearance, dist - d.radius_nm)
    # the simulator keeps footprints at least 0.4 nm apart (simulate._place_defects)
    for i, a in enumerate(truth.defects):
        for b in truth.defects[i + 1:]:
            assert math.hypot(a.row - b.row, a.col - b.col) * px_nm >= a.radius_nm + b.radius_nm + 0.4 - eps, (a, b)
    # Any other marked pixel is in the footprint of an unlisted defect, centred beyond the frame
    # (row or col < -0.5 or >= size - 0.5), so it is less than (radius / px_nm - 0.5) pixels in from
    # the edge (radius <= 1.3 nm, the largest of any class: the TiO2(110) adatom), and, that defect
    # being 0.4 nm clear of every listed one too, at least 0.4 nm outside every listed footprint.
    stray = (truth.mask > 0) & ~listed
    depth = np.minimum.reduce([rows, cols, ny - 1 - rows, nx - 1 - cols])  # pixels in from the edge
    assert np.all(depth[stray] < 1.3 / px_nm - 0.5)
    assert np.all(clearance[stray] >= 0.4 - eps)


@pytest.mark.parametrize("name", ARTEFACTS)
def test_each_artefact_changes_the_scan_only_when_on(name):
    base, _ = simulate_scan("si001h", 4, pixels=(64, 64))
    again, _ = simulate_scan("si001h", 4, pixels=(64, 64), artefacts=Artefacts.only(name, level=0.0))
    on, _ = simulate_scan("si001h", 4, pixels=(64, 64), artefacts=Artefacts.only(name))
    for b, a in zip(_z(base), _z(again)):
        np.testing.assert_array_equal(b, a)
    changed = [not np.array_equal(b, o, equal_nan=True) for b, o in zip(_z(base), _z(on))]
    if name == "hysteresis":
        assert changed == [False, True]  # only the backward trace lags
    else:
        assert any(changed)


@pytest.mark.parametrize("direction", ["down", "up"])
def test_aborted_scan_leaves_the_last_acquired_lines_nan(direction, tmp_path):
    scan, truth = simulate_scan("ge001", 9, pixels=(64, 64), direction=direction, n_defects=25,
                                artefacts=Artefacts.only("aborted"))
    fwd, bwd = _z(scan)
    missing = np.isnan(fwd).all(axis=1)
    assert 0 < missing.sum() < 64
    np.testing.assert_array_equal(missing, np.isnan(bwd).all(axis=1))
    assert not np.isnan(fwd[~missing]).any()
    k = missing.sum()
    expected = np.zeros(64, bool)
    if direction == "down":  # acquired top to bottom: the bottom rows are missing
        expected[64 - k:] = True
    else:
        expected[:k] = True
    np.testing.assert_array_equal(missing, expected)
    assert not truth.mask[missing].any()
    assert all(not missing[int(round(d.row))] for d in truth.defects)
    assert read_sxm(write_example(scan, truth, tmp_path / "ab")).nan_rows == k


def test_clean_si001_rows_are_0768_nm_apart():
    """The strongest non-trivial Fourier peak of a clean filled-state Si(001):H image is the
    dimer-row period, 2 x 0.384 nm."""
    for seed in (1, 2):
        scan, _ = simulate_scan("si001h", seed, pixels=(256, 256), bias_v=-2.0, n_defects=0)
        z = scan.topography().forward.astype(float)
        z = z - z.mean()
        power = np.abs(np.fft.fft2(z * np.outer(np.hanning(256), np.hanning(256)))) ** 2
        k = np.fft.fftfreq(256, d=0.1)  # cycles per nm
        kk = np.hypot(*np.meshgrid(k, k, indexing="ij"))
        power[kk < 0.5] = 0  # steps and tilt
        peak = kk.flat[np.argmax(power)]
        assert 1 / peak == pytest.approx(0.768, rel=0.03)


def test_filled_and_empty_states_look_different_but_tio2_is_filled_only():
    f, _ = simulate_scan("si001h", 2, pixels=SMALL, bias_v=-2.0)
    e, _ = simulate_scan("si001h", 2, pixels=SMALL, bias_v=+2.0)
    assert np.abs(_z(f)[0] - _z(e)[0]).max() > 0.02e-9
    _, t = simulate_scan("tio2110", 2, pixels=SMALL)
    assert t.bias_v < 0
    # TiO2(110) is imaged in filled states only: the bias does not change its image
    filled, _ = simulate_scan("tio2110", 2, pixels=SMALL, bias_v=-2.0)
    empty, _ = simulate_scan("tio2110", 2, pixels=SMALL, bias_v=+2.0)
    for a, b in zip(_z(filled), _z(empty)):
        np.testing.assert_array_equal(a, b)


def test_crops_layout_shape_and_normalisation(tmp_path):
    counts = make_crops(tmp_path / "a", ["si001h", "tio2110"], 2, seed=3)
    assert counts["si001h"] == {c: 2 for c in get_surface("si001h").classes}
    files = sorted((tmp_path / "a").glob("*/*/*.npy"))
    assert len(files) == 16
    for f in files:
        crop = np.load(f)
        assert crop.shape == (2, 32, 32) and crop.dtype == np.float32
        assert abs(np.median(crop)) < 1e-5
        mad = np.median(np.abs(crop - np.median(crop)))
        assert mad * 1.4826 == pytest.approx(1.0, rel=1e-3)
    # the defect is at the centre: averaged over crops (random lattice orientations and phases)
    # the centre stands out from the corners
    mean_abs = np.mean([np.abs(np.load(f)).mean(axis=0) for f in files], axis=0)
    corners = np.mean([mean_abs[r:r + 8, c:c + 8].mean() for r in (0, 24) for c in (0, 24)])
    assert mean_abs[12:20, 12:20].mean() > 1.5 * corners
    make_crops(tmp_path / "b", ["si001h", "tio2110"], 2, seed=3)
    for f in files:
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_apply_noise_kinds(kind):
    image = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    a = apply_noise(image, np.random.default_rng(1), kinds=[kind])
    b = apply_noise(image, np.random.default_rng(1), kinds=[kind])
    assert a.shape == image.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image)
    np.testing.assert_array_equal(apply_noise(image, np.random.default_rng(1), kinds=[]), image)
    with pytest.raises(ValueError):
        apply_noise(image, np.random.default_rng(1), kinds=["bogus"])


def test_cli_writes_files_that_info_reads(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--surface", "si001h", "--n", "3", "--out", str(out), "--pixels", "64",
                 "--artefacts", "tilt,drift"]) == 0
    files = sorted(out.glob("*.sxm"))
    assert len(files) == 3
    capsys.readouterr()
    assert main(["info", "--json", *map(str, files)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["pixels"] for line in lines] == [[64, 64]] * 3
    for f in files:
        t = read_truth(f)
        assert t.surface == "si001h" and t.mask.shape == (64, 64)
        assert t.artefacts == {"tilt": 1.0, "drift": 1.0}


def test_cli_names_scans_an_earlier_run_left_in_the_folder(tmp_path, capsys):
    """A folder is read whole by eval oneclick, adapt and autolabel: simulating fewer scans into a
    folder an earlier run filled says how many of its scans this run did not write."""
    out = tmp_path / "sim"
    args = ["simulate", "--surface", "si001h", "--out", str(out), "--pixels", "32", "--artefacts", "none"]
    assert main([*args, "--n", "3"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main([*args, "--n", "3"]) == 0  # the same run again: the same files, nothing to say
    assert "note:" not in capsys.readouterr().err
    assert main([*args, "--n", "1", "--seed", "5"]) == 0
    err = capsys.readouterr().err
    assert "also holds 3 .sxm file(s) this run did not write (e.g. si001h_0_0000.sxm)" in err


def test_artefacts_parse():
    assert Artefacts.parse("none") == Artefacts.none()
    assert Artefacts.parse("all") == Artefacts.all()
    assert Artefacts.parse("tilt, drift=2").on() == ["tilt", "drift"]
    assert dataclasses.asdict(Artefacts.parse("drift=2"))["drift"] == 2.0
    with pytest.raises(ValueError):
        Artefacts.parse("wobble")


def test_make_dataset_random_geometry(tmp_path):
    paths = make_dataset(tmp_path, "ge001", 2, seed=4, pixel_range=(64, 96))
    assert [p.name for p in paths] == ["ge001_4_0000.sxm", "ge001_4_0001.sxm"]
    for p in paths:
        scan = read_sxm(p)
        truth = read_truth(p)
        assert 64 <= scan.pixels[0] <= 96 and truth.mask.shape == scan.shape
        for d in truth.defects:  # the truth's metres are the scan's own coordinates of the pixel
            assert scan.pixel_to_scanner(d.row, d.col) == pytest.approx((d.x_m, d.y_m), abs=1e-15)


def test_placed_defect_sits_at_the_requested_position():
    scan, truth = simulate_scan("tio2110", 2, pixels=(64, 64), n_defects=0, offset_m=(3e-8, 0),
                                place=[("hydroxyl", 30.0, 0.5)])
    (d,) = truth.defects
    assert d.cls == "hydroxyl"
    # snapped to the nearest O-row site: within half a cell of where it was asked for
    assert math.hypot(d.x_m * 1e9 - 30.0, d.y_m * 1e9 - 0.5) < 0.5


def test_cli_rejects_unknown_names(tmp_path, capsys):
    assert main(["simulate", "--surface", "si111", "--out", str(tmp_path)]) == 2
    assert main(["simulate", "--artefacts", "wobble", "--out", str(tmp_path)]) == 2
    assert "si111" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.sxm"))


def test_creep_far_outside_the_frame_does_not_overflow():
    """Regression: seed 10007 (a training scan) sent the truth's fixed-point search to times far
    before the frame, where the creep's exp(-t/tau) overflowed ("overflow encountered in exp",
    then NaN in Scan.scanner_to_pixel). The motion is now held constant outside T_RANGE."""
    import warnings

    from stmwatch.models.sim.artefacts import T_RANGE, Motion

    geometry = dict(pixels=(320, 320), range_nm=55.52499974818552, angle_deg=-47.0, direction="down",
                    offset_m=(1.1101549239907148e-08, -1.2609975513228594e-07))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        scan, truth = simulate_scan("si001h", 10007, artefacts=Artefacts.all(1.387273863828139), **geometry)
        motion = Motion((0.5, -0.2), (0.1, 0.1), (3.0, 1.0), tau=0.05)
        far = motion.shift(np.array([-1e6, -50.0, 1e6]))
    assert len(truth.defects) == 36
    positions = np.array([(d.row, d.col, d.x_m, d.y_m) for d in truth.defects])
    assert np.isfinite(positions).all()
    assert np.isfinite(far).all()
    # inside T_RANGE the formula is unchanged; beyond it the motion is held at its edge value
    t = np.array([-0.01, 0.0, 0.3, 1.0])
    expected = [motion.velocity[i] * t + 0.5 * motion.acceleration[i] * t ** 2
                + motion.creep[i] * (1 - np.exp(-t / motion.tau)) for i in range(2)]
    np.testing.assert_array_equal(motion.shift(t), expected)
    np.testing.assert_array_equal(np.array(motion.shift(np.array([-1e6])))[:, 0],
                                  np.array(motion.shift(np.array([T_RANGE[0]])))[:, 0])


def test_cli_randomised_style_writes_the_randomisers_scans(tmp_path, capsys):
    """``--style randomised``: the domain randomiser's scans (its own pixel size 0.06-0.2 nm, its
    own bias and artefacts), square at --pixels, the same bytes for the same seed, and not the
    training style's scan of that seed."""
    runs = {}
    for name, style in (("a", "randomised"), ("b", "randomised"), ("t", "training")):
        assert main(["simulate", "--surface", "tio2110", "--n", "2", "--out", str(tmp_path / name), "--pixels", "64",
                     "--seed", "3", "--style", style, "--json"]) == 0
        runs[name] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["file"]).name for r in runs["a"]] == ["tio2110_randomised_3_0000.sxm", "tio2110_randomised_3_0001.sxm"]
    assert all(r["style"] == "randomised" and r["artefacts"] is None for r in runs["a"])
    for ra, rb, rt in zip(runs["a"], runs["b"], runs["t"]):
        assert Path(ra["file"]).read_bytes() == Path(rb["file"]).read_bytes()
        scan, truth = read_sxm(ra["file"]), read_truth(ra["file"])
        assert scan.pixels == (64, 64) and truth.mask.shape == (64, 64)
        assert 0.06e-9 <= scan.range_m[0] / 64 <= 0.2e-9
        assert not np.array_equal(scan.topography().forward, read_sxm(rt["file"]).topography().forward, equal_nan=True)


@pytest.mark.parametrize("bad", [["--pixels", "0"], ["--angle", "nan"], ["--n", "0"], ["--size-nm", "-5"]])
def test_simulate_refuses_a_geometry_that_makes_no_scan_or_a_wrong_one(bad, tmp_path, capsys):
    """Found by a review (stop 33): --pixels 0 and --angle nan were tracebacks after the folder was
    made, --n 0 wrote nothing with exit 0, and --size-nm -5 wrote a mirrored frame."""
    assert main(["simulate", "--out", str(tmp_path / "out"), *bad]) == 2
    assert bad[0] in capsys.readouterr().err and not (tmp_path / "out").exists()
