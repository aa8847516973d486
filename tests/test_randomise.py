"""Domain randomisation of the training simulator (models/sim/randomise.py): deterministic per
seed, the truth still where the defects are, contamination never in the truth."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stmwatch.models.sim.randomise import (RandomStyle, contamination, draw_style, feedback_lag, randomise_heights,
                                           randomised_scan, tip_dilation)
from stmwatch.models.sim.simulate import simulate_scan
from stmwatch.models.sim.truth import Truth, TruthDefect


def _z(scan):
    z = next(c for c in scan.channels if c.name == "Z")
    return np.asarray(z.forward, float) * 1e9, np.asarray(z.backward, float) * 1e9


def test_same_seed_same_scan_other_seed_other_scan():
    a, ta, sa = randomised_scan("ge001", 5, pixel_range=(96, 96))
    b, tb, sb = randomised_scan("ge001", 5, pixel_range=(96, 96))
    c, _, sc = randomised_scan("ge001", 6, pixel_range=(96, 96))
    assert sa == sb and sa != sc
    for fa, fb in zip(_z(a), _z(b)):
        np.testing.assert_array_equal(fa, fb)
    assert ta.defects == tb.defects
    np.testing.assert_array_equal(ta.mask, tb.mask)
    assert a.pixels != c.pixels or not np.array_equal(_z(a)[0], _z(c)[0], equal_nan=True)


def _quiet(style: RandomStyle) -> RandomStyle:
    """The style's tip, lag, looks and contrast, without noise, steps or contamination (all random
    draws then cancel between two scans of one sample)."""
    return dataclasses.replace(style, noise_1f=0.0, white=0.0, telegraph=0.0, line_offsets=0.0, scars=0,
                               glitch_lines=0, patches_per_1000nm2=0.0, extra_step=False, gamma=1.0)


def _signal_centre(signal: np.ndarray, row: float, col: float, reach_px: float) -> tuple[float, float]:
    """Where ``signal`` (>= 0) is centred near (row, col): its centre of mass within ``reach_px``,
    re-centred there until it settles (a mean shift). Infinite where there is no signal."""
    rows, cols = np.indices(signal.shape)
    for _ in range(30):
        w = signal * (np.hypot(rows - row, cols - col) <= reach_px)
        if w.sum() <= 0:
            return np.inf, np.inf
        new = (w * rows).sum() / w.sum(), (w * cols).sum() / w.sum()
        if np.hypot(new[0] - row, new[1] - col) < 0.01:
            break
        row, col = new
    return row, col


@pytest.mark.parametrize("surface,seed", [("si001h", 3), ("ge001", 4), ("tio2110", 5)])
def test_truth_positions_are_where_the_randomised_defects_are(surface, seed):
    """The randomised scan minus the same sample without defects, seen by the same instrument, is
    the defects' signal alone: centred on the truth positions, nothing far from them."""
    kw = dict(pixels=(192, 192), range_nm=32.0, bias_v=1.5)
    scan, truth = simulate_scan(surface, seed, n_defects=8, **kw)
    bare, bare_truth = simulate_scan(surface, seed, n_defects=0, **kw)
    assert len(truth.defects) >= 5 and not bare_truth.defects
    nm = 32.0 / 192  # nm per pixel
    rows, cols = np.mgrid[0:192, 0:192]
    # Overlapping looks (8 defects on 32 nm come within 3.3 nm of each other, inside each other's
    # reach): each pixel's signal counts for its nearest truth defect only.
    dist_px = np.stack([np.hypot(rows - d.row, cols - d.col) for d in truth.defects])
    nearest = dist_px.argmin(axis=0)
    for k in range(3):  # three instruments
        style = _quiet(draw_style(np.random.default_rng([seed, k])))
        style = dataclasses.replace(style, second_apex=None, invert=bool(k == 1))
        a = randomise_heights(scan, truth, style, np.random.default_rng(9))
        b = randomise_heights(bare, bare_truth, style, np.random.default_rng(9))
        diff = _z(a)[0] - _z(b)[0]
        # forward + backward: the feedback lag (up to 2.5 px = 0.42 nm here) trails the signal to
        # the right in one and to the left in the other
        signal = np.abs(diff) + np.abs(_z(a)[1] - _z(b)[1])  # nm
        offsets = []  # nm: (rows, cols) from each truth position to the centre of its defect's signal
        for i, d in enumerate(truth.defects):
            r = dist_px[i] * nm
            assert np.abs(diff[r <= 0.5]).max() > 0.005, (k, d)  # nm: the defect is there
            if min(d.row, d.col, 191 - d.row, 191 - d.col) * nm < d.radius_nm:
                continue  # its footprint is cut by the frame: the signal's centre is pulled inside
            # the looks reach 2.5 x radius x size factor (the style's defect_size, +-10 % per defect)
            reach_nm = 2.5 * d.radius_nm * style.defect_size * 1.1
            centre = _signal_centre(np.where(nearest == i, signal, 0.0), d.row, d.col, reach_nm / nm)
            offsets.append(((centre[0] - d.row) * nm, (centre[1] - d.col) * nm))
        # The looks (size factor, gain, halo) are centred on the truth; what moves one defect's
        # signal off it is its own shape (lobes up to 0.3 nm off centre, times the size factor), a
        # skewed or blunt tip (an inverted defect is all but filled in), a neighbour's looks or the
        # frame cutting its looks: a few tenths of a nm, now and then about 1 nm for one defect.
        # Truth positions 1 nm off put most signals about 1 nm away, all the same way: half of
        # that (0.5 nm) splits the two, for most defects and for their mean.
        assert len(offsets) >= 3, k
        distance = np.hypot(*np.transpose(offsets))
        assert np.median(distance) < 0.5, (k, np.round(distance, 2))  # nm
        assert np.hypot(*np.mean(offsets, axis=0)) < 0.5, (k, np.round(offsets, 2))  # nm: no common shift
        # beyond the looks' reach (2.5 x size 1.6 x radius), the tip and the lag: nothing
        dist = np.min([dist_px[i] * nm - d.radius_nm for i, d in enumerate(truth.defects)], axis=0)
        far = dist > 2.5 * 1.6 * max(d.radius_nm for d in truth.defects) + 2.0
        edge = int(np.ceil(4.0 / nm))  # defects just outside the frame are drawn but not listed
        far[:edge], far[-edge:], far[:, :edge], far[:, -edge:] = False, False, False, False
        assert far.sum() > 500 and np.abs(diff[far]).max() < 2e-3, k


def test_contamination_is_clear_of_the_defects_and_not_in_the_truth():
    truth = Truth("si001h", [TruthDefect("vacancy", 40.0 + 20 * i, 60.0, 0.0, 0.0, 0.8) for i in range(4)],
                  np.zeros((160, 160), np.uint8))
    before = (list(truth.defects), truth.mask.copy())
    style = dataclasses.replace(draw_style(np.random.default_rng(1)), patches_per_1000nm2=40.0)
    frames = [np.zeros((160, 160)), np.zeros((160, 160))]
    pixel_nm = (0.2, 0.2)
    patches = contamination(frames, truth, style, pixel_nm, np.random.default_rng(2))
    assert len(patches) >= 3
    for row, col, radius in patches:
        assert frames[0][int(row), int(col)] > 0.03  # nm: a real patch
        for d in truth.defects:
            assert np.hypot(row - d.row, col - d.col) * 0.2 > radius + d.radius_nm + 1.5 - 1e-9
    for d in truth.defects:  # nothing was put on the defects
        assert abs(frames[0][int(d.row), int(d.col)]) < 0.02
    assert truth.defects == before[0] and np.array_equal(truth.mask, before[1])


def test_tip_keeps_a_protrusions_peak_and_the_lag_trails_along_the_trace():
    frame = np.zeros((41, 41))
    frame[20, 20] = 0.3
    style = dataclasses.replace(draw_style(np.random.default_rng(0)), tip_radius=(1.0, 2.0), tip_angle=0.4,
                                tip_skew=3.0, second_apex=None)
    out = tip_dilation(frame, style, (0.1, 0.1))
    assert np.unravel_index(out.argmax(), out.shape) == (20, 20) and out[20, 20] == pytest.approx(0.3)
    assert out[20, 23] > 0 and out[20, 17] > 0 and out[20, 23] != pytest.approx(out[20, 17])  # asymmetric tip
    # a first-order low-pass of 1 pixel: the step reaches 1/2, 3/4, ... of its height along the trace
    step = np.zeros((1, 8))
    step[0, 4:] = 1.0
    np.testing.assert_allclose(feedback_lag(step, 1.0, True)[0, 4:7], [0.5, 0.75, 0.875])
    np.testing.assert_allclose(feedback_lag(step[:, ::-1], 1.0, False)[0, ::-1][4:7], [0.5, 0.75, 0.875])


def test_train_unet_randomise_share_swaps_in_randomised_scans_deterministically():
    from stmwatch.models.train_unet import scan_patches

    plain = scan_patches("tio2110", 11, 64, 4.0, 2, None, 0.0)
    randomised = scan_patches("tio2110", 11, 64, 4.0, 2, None, 1.0)
    again = scan_patches("tio2110", 11, 64, 4.0, 2, None, 1.0)
    np.testing.assert_array_equal(randomised.images, again.images)
    assert not np.array_equal(plain.images, randomised.images)
    # the patches are cut from the randomised scan of that seed, as the model sees it
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.train_unet import cut_patches

    scan, truth, _ = randomised_scan("tio2110", 11)
    prepared = prepare(scan, "tio2110")
    image = np.where(prepared.valid, prepared.image, 0.0).astype(np.float32)
    expected = cut_patches(image, np.zeros((0, 2)), 64, len(randomised), 4.0, np.random.default_rng(11))
    np.testing.assert_array_equal(randomised.images, expected.images)
    assert len(truth.defects) > 0 and randomised.targets.sum() > 0
    # a share between 0 and 1: each seed gives one kind or the other, and both come up
    kinds = set()
    for seed in range(12, 24):
        half = scan_patches("tio2110", seed, 64, 4.0, 2, None, 0.5).images
        if np.array_equal(half, scan_patches("tio2110", seed, 64, 4.0, 2, None, 1.0).images):
            kinds.add("randomised")
        else:
            np.testing.assert_array_equal(half, scan_patches("tio2110", seed, 64, 4.0, 2, None, 0.0).images)
            kinds.add("training")
        if len(kinds) == 2:
            break
    assert kinds == {"randomised", "training"}


def test_an_instrument_replaces_the_scans_own_microscope_but_not_its_sample():
    """``instrument``: its tip, contrast, looks and noise are the scan's; the sample's draw (density,
    rows, steps, contamination, bias sign) stays the seed's own, so two scans of one microscope differ."""
    from stmwatch.models.sim.randomise import INSTRUMENT_FIELDS

    instrument = draw_style(np.random.default_rng(99))
    _, _, own = randomised_scan("si001h", 7, pixel_range=(64, 64))
    scan, _, style = randomised_scan("si001h", 7, pixel_range=(64, 64), instrument=instrument)
    _, _, other = randomised_scan("si001h", 8, pixel_range=(64, 64), instrument=instrument)
    for field in dataclasses.fields(RandomStyle):
        expected = getattr(instrument if field.name in INSTRUMENT_FIELDS else own, field.name)
        assert getattr(style, field.name) == expected, field.name
    assert {f: getattr(style, f) for f in INSTRUMENT_FIELDS} == {f: getattr(other, f) for f in INSTRUMENT_FIELDS}
    assert style.density != other.density
    assert own.tip_radius != instrument.tip_radius  # the instrument did change something
