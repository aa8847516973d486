"""Post-processing, the segmenter's coordinates, detection scoring, and the shipped weights on
held-out simulated scans."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from stmwatch.drivers.scan import Channel, Scan
from stmwatch.models.eval_segment import DetectionScore, match_points
from stmwatch.models.segment import UNetSegmenter, crops_at, find_components, label_components
from stmwatch.models.unet import UNet, UNetConfig

ndimage = pytest.importorskip("scipy.ndimage")  # independent truth for the labelling (tests only)


def test_labels_match_scipy_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random()
        labels, n = label_components(mask)
        expected, n_expected = ndimage.label(mask, structure=np.ones((3, 3)))
        assert n == n_expected
        assert np.array_equal(labels > 0, mask)
        # the same partition: each of our labels maps to exactly one of scipy's and back
        pairs = set(zip(labels[mask].tolist(), expected[mask].tolist()))
        assert len(pairs) == n


def test_diagonal_pixels_join_and_separate_runs_do_not():
    mask = np.array([[1, 0, 0, 1],
                     [0, 1, 0, 1],
                     [0, 0, 0, 0],
                     [1, 1, 0, 1]], dtype=bool)
    labels, n = label_components(mask)
    assert n == 4
    assert labels[0, 0] == labels[1, 1] and labels[0, 3] == labels[1, 3] != labels[0, 0]
    assert labels[3, 0] == labels[3, 1] != labels[3, 3]


def gaussian(shape, centres, sigma=2.0, height=1.0):
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    out = np.zeros(shape)
    for r, c in centres:
        out += height * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2))
    return out


def test_components_centroid_area_score_and_filters():
    prob = gaussian((60, 80), [(20.3, 30.6), (45.0, 10.25)]) * 0.95
    prob[2:4, 70:72] = 0.9  # a 4-pixel speck
    comps, labels = find_components(prob, threshold=0.5, min_area=6)
    assert len(comps) == 2 and labels[3, 71] == 0
    found = sorted((c.row, c.col) for c in comps)
    # symmetric bumps: the weighted centroid is the centre to well under a pixel
    assert found[0] == pytest.approx((20.3, 30.6), abs=0.1) and found[1] == pytest.approx((45.0, 10.25), abs=0.1)
    # area: pixels with 0.95 exp(-d²/8) > 0.5, i.e. d² < 8 ln 1.9 -> about pi * 5.13 = 16 pixels
    assert all(12 <= c.area <= 21 for c in comps)
    assert all(0.5 < c.score < 0.95 for c in comps)
    valid = np.ones_like(prob, dtype=bool)
    valid[40:, :] = False  # lines never acquired: nothing found there
    comps, _ = find_components(prob, 0.5, 6, valid)
    assert len(comps) == 1 and comps[0].row < 30


def test_crops_are_centred_and_zero_padded():
    image = np.arange(2 * 40 * 50, dtype=np.float32).reshape(2, 40, 50)
    crops = crops_at(image, np.array([20.2, 0.0]), np.array([25.4, 49.0]))
    assert crops.shape == (2, 2, 32, 32)
    assert crops[0, 1, 16, 16] == image[1, 20, 25]
    assert crops[1, 0, 16, 16] == image[0, 0, 49]
    assert np.all(crops[1, :, :16, :] == 0) and np.all(crops[1, :, :, 17:] == 0)  # outside the image


def test_match_points_and_scores_by_hand():
    truth = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    pred = np.array([[0.3, 0.4], [10.0, 0.2], [10.1, 0.0], [50.0, 0.0]])
    pairs = match_points(pred, truth, radius=0.6)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 0), (2, 1)]  # closest pair wins truth 1
    score = DetectionScore()
    score.add(pred, truth, 0.6)
    assert (score.tp, score.fp, score.fn) == (2, 2, 1)
    assert score.precision == 0.5 and score.recall == pytest.approx(2 / 3)
    assert score.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert sorted(score.dx) == pytest.approx([0.1, 0.3]) and sorted(score.dy) == pytest.approx([0.0, 0.4])


def test_f1_interval_by_resampling_scans_by_hand():
    same = DetectionScore()
    for _ in range(5):  # five identical scans: every resample has the same F1
        same.add(np.array([[0.0, 0.0], [9.0, 9.0]]), np.array([[0.0, 0.0], [5.0, 5.0]]), 0.6)
    assert same.f1_interval() == pytest.approx((0.5, 0.5))
    two = DetectionScore()
    two.add(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]]), 0.6)  # a perfect scan
    two.add(np.zeros((0, 2)), np.array([[0.0, 0.0]]), 0.6)  # a scan with one miss
    # resamples of two scans: both perfect (F1 1, p 1/4), one of each (2/3, p 1/2), both missed (0, p 1/4)
    assert two.f1 == pytest.approx(2 / 3) and two.f1_interval() == (0.0, 1.0)
    assert np.isnan(DetectionScore().f1_interval()[0])


class BrightSpots:
    """A stand-in backend: 'probability' = bright bumps of the forward channel."""

    name = "bright-spots"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return (batch[:, 0] > 3.0).astype(np.float32)


def bump_scan(direction: str, angle: float) -> tuple[Scan, list[tuple[float, float]]]:
    """A 20 x 20 nm, 200 x 160 px scan (non-square pixels) with Gaussian bumps at known pixels."""
    nx, ny = 200, 160
    centres = [(40.0, 50.0), (100.5, 150.25), (130.0, 30.0)]  # (row, col), display frame
    rng = np.random.default_rng(0)
    z = (gaussian((ny, nx), centres, sigma=3.0, height=1e-10) + rng.normal(0, 3e-12, (ny, nx))).astype(np.float32)
    scan = Scan(channels=[Channel("Z", "m", forward=z, backward=z.copy())], pixels=(nx, ny), range_m=(20e-9, 20e-9),
                offset_m=(1e-7, -2e-7), angle_deg=angle, direction=direction)
    return scan, centres


@pytest.mark.parametrize("direction,angle", [("down", 0.0), ("up", 30.0)])
def test_segmenter_positions_in_pixels_and_metres(direction, angle):
    scan, centres = bump_scan(direction, angle)
    segmenter = UNetSegmenter(UNet(UNetConfig(width=4, depth=2)), BrightSpots(), "si001h", version="test",
                              min_area_px=4, tile_px=64, tile_overlap_px=16)
    defects = sorted(segmenter.segment(scan), key=lambda d: d.row)
    assert len(defects) == 3
    assert segmenter.last_timing_ms["preprocess"] > 0
    for d, (r, c) in zip(defects, centres):
        assert (d.row, d.col) == pytest.approx((r, c), abs=0.6)  # scan pixels: 0.1 / 0.125 nm
        x, y = scan.pixel_to_scanner(r, c)
        assert math.hypot(d.x_m - x, d.y_m - y) < 0.08e-9
        assert d.crop.shape == (2, 32, 32) and d.label == "defect"
        assert 10 < d.area_px < 200


def test_segmenter_ignores_lines_never_acquired():
    scan, centres = bump_scan("down", 0.0)
    z = scan.channels[0]
    z.forward[90:] = np.nan
    z.backward[90:] = np.nan
    segmenter = UNetSegmenter(UNet(UNetConfig(width=4, depth=2)), BrightSpots(), "si001h", version="test",
                              min_area_px=4, tile_px=64, tile_overlap_px=16)
    defects = segmenter.segment(scan)
    assert [round(d.row) for d in defects] == [40]


def test_scans_too_coarse_to_resolve_defects_give_none():
    scan, _ = bump_scan("down", 0.0)
    coarse = Scan(channels=scan.channels, pixels=scan.pixels, range_m=(100e-9, 100e-9))  # 0.5 / 0.625 nm per px
    segmenter = UNetSegmenter(UNet(UNetConfig(width=4, depth=2)), BrightSpots(), "si001h", version="test",
                              min_area_px=4, tile_px=64, tile_overlap_px=16)
    assert segmenter.resolves(scan) and not segmenter.resolves(coarse)
    assert segmenter.segment(coarse) == []
    assert len(segmenter.last_warnings) == 1 and "not resolved" in segmenter.last_warnings[0]
    segmenter.segment(scan)
    assert segmenter.last_warnings == []  # the warning was the coarse scan's, not the next one's


def test_held_out_blocks_pool_into_one_score():
    """``blocks=2``: the scans of both blocks (seeds ``s`` and ``s + BLOCK_STEP``) pooled, each
    block's F1 beside the pooled one, the same counts as the two blocks scored apart."""
    from stmwatch.models.eval_segment import BLOCK_STEP, evaluate_surfaces

    options = dict(seed=9_300_000, pixels=(128, 128))
    pooled = evaluate_surfaces(["ge001"], 1, blocks=2, **options)["ge001"]
    first = evaluate_surfaces(["ge001"], 1, **options)["ge001"]
    second = evaluate_surfaces(["ge001"], 1, **{**options, "seed": 9_300_000 + BLOCK_STEP})["ge001"]
    assert pooled["scans"] == 2 and pooled["first_seeds"] == [9_300_000, 9_300_000 + BLOCK_STEP]
    for key in ("true", "found", "tp"):
        assert pooled[key] == first[key] + second[key]
    assert pooled["f1_per_block"] == [first["f1"], second["f1"]]
    assert pooled["true"] > 0


def test_components_below_min_score_are_left_out_and_the_ghost_method_is_checked():
    """BrightSpots' components all have mean probability 1: kept at min_score 0.99, left out at 1.01."""
    scan, centres = bump_scan("down", 0.0)
    make = functools.partial(UNetSegmenter, UNet(UNetConfig(width=4, depth=2)), BrightSpots(), "si001h",
                             version="test", min_area_px=4, tile_px=64, tile_overlap_px=16)
    assert len(make(min_score=0.99, ghost_method="pairs").segment(scan)) == len(centres)
    assert make(min_score=1.01).segment(scan) == []
    with pytest.raises(ValueError, match="ghost_method"):
        make(ghost_method="both")
