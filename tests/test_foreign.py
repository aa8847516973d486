"""The foreign microscope (models/sim/foreign.py): deterministic, truthful, and not the training style."""
from __future__ import annotations

import numpy as np
import pytest

from stmwatch.daemon.cli import main
from stmwatch.models.sim.artefacts import Artefacts
from stmwatch.models.sim.foreign import STYLE, simulate_foreign
from stmwatch.models.sim.simulate import read_truth, simulate_scan
from stmwatch.models.surfaces import get_surface

SMALL = (96, 96)


def _z(scan):
    z = scan.topography()
    return z.forward.astype(float) * 1e9, z.backward.astype(float) * 1e9


def test_same_seed_same_scan_and_truth_other_seed_other_scan():
    a, ta = simulate_scan("si001h", 3, pixels=SMALL, style="foreign")
    b, tb = simulate_foreign("si001h", 3, pixels=SMALL)
    c, _ = simulate_foreign("si001h", 4, pixels=SMALL)
    for fa, fb, fc in zip(_z(a), _z(b), _z(c)):
        np.testing.assert_array_equal(fa, fb)
        assert not np.array_equal(fa, fc)
    np.testing.assert_array_equal(ta.mask, tb.mask)
    assert ta.defects == tb.defects and ta.artefacts == tb.artefacts


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="foreign"):
        simulate_scan("si001h", 1, pixels=SMALL, style="other")


@pytest.mark.parametrize("surface", ["si001h", "ge001", "tio2110"])
def test_truth_positions_and_mask_agree_with_what_is_drawn(surface):
    """The scan minus the very same scan rendered without its defects is the defects' signal
    alone: it is clearly non-zero at every truth position (off glitched lines), zero far from
    every defect, and the mask covers exactly the pixels within each defect's radius."""
    kw = dict(pixels=(160, 160), n_defects=12, bias_v=(1.5 if surface != "si001h" else -1.8))
    scan, truth = simulate_foreign(surface, 12, **kw)
    bare, bare_truth = simulate_foreign(surface, 12, draw_defects=False, **kw)
    assert len(truth.defects) >= 8 and not bare_truth.defects and not bare_truth.mask.any()
    diff = _z(scan)[0] - _z(bare)[0]
    nm = scan.range_m[0] * 1e9 / scan.pixels[0]
    rows, cols = np.mgrid[0:160, 0:160]
    glitched = set(truth.artefacts["glitched_rows"])
    classes = get_surface(surface).classes
    dist = np.full((160, 160), np.inf)
    for d in truth.defects:
        r = np.hypot(rows - d.row, cols - d.col) * nm  # nm from this defect
        dist = np.minimum(dist, r - d.radius_nm)
        if not any(abs(g - d.row) < 4 for g in glitched):
            assert np.abs(diff[r <= 0.5]).max() > 0.01, d  # nm: the defect is there
        centre = truth.mask[int(round(d.row)), int(round(d.col))] if 0 <= round(d.row) < 160 and 0 <= round(d.col) < 160 else None
        if centre is not None:
            assert centre == classes.index(d.cls) + 1
        # the mask: class index + 1 on the defect's disc
        inside = (r <= d.radius_nm - 0.6 * nm)
        assert np.all(truth.mask[inside] == classes.index(d.cls) + 1)
    far = dist > 2.0  # beyond the tip's reach (0.7 nm), the blur and the feedback lag
    far[list(glitched)] = False
    edge = int(np.ceil(2.5 / nm))  # defects just outside the frame are drawn but not listed
    far[:edge], far[-edge:], far[:, :edge], far[:, -edge:] = False, False, False, False
    assert far.sum() > 1000 and np.abs(diff[far]).max() < 1e-3
    inner = np.zeros_like(far)
    inner[edge:-edge, edge:-edge] = True  # (a defect centred just outside the frame is masked, not listed)
    assert np.all(dist[(truth.mask > 0) & inner] <= 0.6 * nm)  # no mask pixel without a defect


def test_it_differs_from_the_training_style_in_defect_sizes_and_density():
    """Measured on the scans, not read from the parameters: mask area per defect (the footprint
    of each defect as drawn) and the range of defect counts per 256 x 256 scan."""
    def area_and_count(scan, truth):
        nm = scan.range_m[0] * 1e9 / scan.pixels[0]
        return (truth.mask > 0).sum() * nm * nm / max(len(truth.defects), 1), len(truth.defects)

    train = [area_and_count(*simulate_scan(s, k, artefacts=Artefacts.random(np.random.default_rng(k))))
             for s in ("si001h", "ge001") for k in range(4)]
    foreign = [area_and_count(*simulate_foreign(s, k)) for s in ("si001h", "ge001") for k in range(4)]
    assert np.mean([a for a, _ in foreign]) > 1.3 * np.mean([a for a, n in train if n])
    counts = [n for _, n in foreign]
    assert max(counts) > 3 * max(n for _, n in train) and min(counts) < 30


def test_noise_has_telegraph_jumps_the_training_style_lacks():
    """Telegraph noise: the Z of a defect-free foreign scan jumps between levels within lines;
    the height differences along the fast axis have heavy tails (kurtosis) compared with the
    training style's noise on the same surface."""
    def kurt(scan):
        f = _z(scan)[0]
        f = f[np.isfinite(f).all(axis=1)]
        d = np.diff(f, axis=1).ravel()
        d = d - d.mean()
        return float(np.mean(d ** 4) / np.mean(d ** 2) ** 2)

    style = dict(pixels=SMALL, n_defects=0)
    foreign = [kurt(simulate_foreign("tio2110", k, **style)[0]) for k in range(3)]
    train = [kurt(simulate_scan("tio2110", k, artefacts=Artefacts.parse("noise_1f,white_noise"), **style)[0])
             for k in range(3)]
    assert STYLE.telegraph_nm[0] > 0
    assert min(foreign) > max(train), (foreign, train)


def test_cli_writes_foreign_scans_with_truth(tmp_path, capsys):
    assert main(["simulate", "--style", "foreign", "--surface", "ge001", "--n", "2", "--pixels", "64",
                 "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob("*.sxm"))
    assert len(files) == 2 and all("foreign" in f.name for f in files)
    truth = read_truth(files[0])
    assert truth.artefacts["style"] == "foreign" and truth.mask.shape == (64, 64)
