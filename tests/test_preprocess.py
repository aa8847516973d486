"""Preprocessing: each step against synthetic images with known answers, and the whole chain on
every real file (shapes checked against the independent manifest)."""
from __future__ import annotations

import numpy as np
import pytest

from stmwatch.daemon.config import ConfigError, config_from_dict
from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import read_sxm, stored_to_display
from stmwatch.models.preprocess import (
    PreprocessSettings,
    align_rows,
    apparent_height,
    combine_directions,
    fill_nan_rows,
    find_scars,
    fit_plane,
    level_plane,
    model_shape,
    normalise,
    prepare,
    repair_scars,
    resample,
    robust_sigma,
    row_offsets,
)
from stmwatch.models.surfaces import get_surface

from .conftest import REAL, real_files


def _blobs(shape, centres, height=1.0, sigma=2.0) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    out = np.zeros(shape)
    for r, c in centres:
        out += height * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))
    return out


def _slopes(image: np.ndarray) -> tuple[float, float]:
    """Ordinary least-squares slope (per pixel) along columns and rows."""
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]].astype(float)
    design = np.stack([np.ones(image.size), cols.ravel(), rows.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, image.ravel(), rcond=None)
    return float(coef[1]), float(coef[2])


def _scan(forward: np.ndarray, range_nm: tuple[float, float], backward: np.ndarray | None = None,
          direction: str = "down") -> Scan:
    """A Scan in memory whose Z channel is ``forward`` (nm, display frame)."""
    rows, cols = forward.shape
    channel = Channel("Z", "m", forward=(forward * 1e-9).astype(np.float32),
                      backward=None if backward is None else (backward * 1e-9).astype(np.float32))
    return Scan([channel], pixels=(cols, rows), range_m=(range_nm[0] * 1e-9, range_nm[1] * 1e-9),
                offset_m=(5e-9, -3e-9), direction=direction)


# ---- fill_nan --------------------------------------------------------------------------------
def test_fill_nan_marks_exactly_the_missing_rows_and_pixels():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 30))
    image[:4] = np.nan  # an aborted 'up' scan misses its top rows in the display frame
    image[10, 7] = np.nan  # one dropped pixel
    image[12, 3] = np.inf
    filled, valid = fill_nan_rows(image)
    expected = np.ones((20, 30), bool)
    expected[:4] = False
    expected[10, 7] = expected[12, 3] = False
    assert np.array_equal(valid, expected)
    assert np.isfinite(filled).all()
    assert np.array_equal(filled[valid], image[valid])
    good = np.isfinite(image)
    assert filled[0, 0] == pytest.approx(np.median(image[good]))
    row_ten = image[10][np.isfinite(image[10])]
    assert filled[10, 7] == pytest.approx(np.median(row_ten))


def test_all_nan_image_gives_zeros_and_no_valid_pixel():
    filled, valid = fill_nan_rows(np.full((3, 4), np.nan))
    assert not valid.any() and np.array_equal(filled, np.zeros((3, 4)))


# ---- plane -----------------------------------------------------------------------------------
def test_level_plane_removes_a_tilt_despite_defects_in_one_corner():
    rng = np.random.default_rng(1)
    shape = (100, 120)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    slope_col, slope_row = 0.03, -0.02  # nm per pixel
    surface = 0.01 * rng.normal(size=shape)
    defects = _blobs(shape, [(15 + 12 * i, 95 + 8 * (i % 3)) for i in range(6)], height=2.0, sigma=3.0)
    image = 5.0 + slope_col * cols + slope_row * rows + surface + defects
    # the corner defects would tilt an ordinary least-squares fit: the test can tell the two apart
    ols_tilt_col, _ = _slopes(surface + defects)
    assert ols_tilt_col > 0.05 * slope_col

    levelled = level_plane(image)
    residual_plane = levelled - surface - defects  # what the fit left: a plane
    tilt_col, tilt_row = _slopes(residual_plane)
    assert abs(tilt_col) < 0.01 * slope_col and abs(tilt_row) < 0.01 * abs(slope_row)
    assert abs(np.median(levelled - defects)) < 0.01


def test_level_plane_ignores_masked_pixels():
    rows, cols = np.mgrid[:40, :50].astype(float)
    image = 0.1 * cols
    mask = np.ones(image.shape, bool)
    mask[:10] = False
    image[:10] = 1000.0  # garbage where the mask says no data
    levelled = level_plane(image, mask)
    assert np.abs(levelled[10:]).max() < 1e-9


def test_level_plane_of_a_constant_is_zero():
    assert np.abs(level_plane(np.full((8, 9), 3.0))).max() < 1e-12


# ---- align_rows ------------------------------------------------------------------------------
def test_align_rows_median_diff_removes_offsets_and_keeps_a_diagonal_step():
    rng = np.random.default_rng(2)
    rows, cols = np.mgrid[:64, :128].astype(float)
    truth = np.where(cols > 1.5 * rows + 10, 1.0, 0.0)  # a terrace step crossing the frame
    offsets = rng.normal(scale=0.5, size=64)
    exact = align_rows(truth + offsets[:, None], "median_diff") - truth  # step alone: exact
    assert np.abs(exact - exact.mean()).max() < 1e-9
    truth += 0.1 * np.cos(2 * np.pi * rows / 8) * np.cos(2 * np.pi * cols / 8)  # a lattice
    truth += _blobs(truth.shape, [(20, 30), (40, 90), (41, 100)], height=1.5, sigma=3.0)
    truth += 0.01 * rng.normal(size=truth.shape)
    aligned = align_rows(truth + offsets[:, None], "median_diff")
    error = aligned - truth  # lattice, defects and noise leave a small drift
    assert (error - error.mean()).std() < 0.1 * offsets.std()
    # row medians jump where the upper terrace passes half the row: the test can tell
    by_median = align_rows(truth + offsets[:, None], "median") - truth
    assert (by_median - by_median.mean()).std() > 0.5 * offsets.std()


def test_align_rows_median_removes_known_offsets():
    rng = np.random.default_rng(3)
    truth = rng.normal(scale=0.05, size=(50, 80))
    truth += _blobs(truth.shape, [(10, 10), (30, 60)], height=1.0, sigma=2.0)
    offsets = np.linspace(-1, 1, 50) + rng.normal(scale=0.3, size=50)
    aligned = align_rows(truth + offsets[:, None], "median")
    error = aligned - truth
    assert (error - error.mean()).std() < 0.05 * offsets.std()


def test_align_rows_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="median_diff"):
        align_rows(np.zeros((3, 3)), "mean")


# ---- repair_scars ----------------------------------------------------------------------------
def test_repair_scars_restores_known_scars_and_leaves_the_rest():
    rng = np.random.default_rng(4)
    rows, cols = np.mgrid[:80, :120].astype(float)
    truth = np.sin(2 * np.pi * cols / 40) + 0.5 * np.sin(2 * np.pi * rows / 50) + 0.01 * rng.normal(size=rows.shape)
    image = truth.copy()
    image[30, 20:80] += 1.0  # a one-row scar
    image[50:52, 10:60] -= 0.8  # a two-row scar
    image[65, 40:48] += 1.0  # too short (8 < 16 columns): a feature, not a scar
    expected = np.zeros(truth.shape, bool)
    expected[30, 20:80] = True
    expected[50:52, 10:60] = True
    assert np.array_equal(find_scars(image, threshold=3.0, max_width=2, min_length=16), expected)

    repaired = repair_scars(image, threshold=3.0, max_width=2, min_length=16)
    assert np.abs(repaired[expected] - truth[expected]).max() < 0.05
    assert np.array_equal(repaired[~expected], image[~expected])


# ---- combine_directions ----------------------------------------------------------------------
def test_combine_directions_aligns_and_falls_back_to_the_other_frame():
    rng = np.random.default_rng(5)
    forward = rng.normal(size=(10, 12))
    backward = forward + 0.3
    backward[:3] = np.nan
    forward[8, 5] = np.nan
    combined = combine_directions(forward, backward)
    assert np.allclose(combined[:3], forward[:3])
    assert combined[8, 5] == pytest.approx(backward[8, 5] - 0.3)
    both = np.isfinite(forward) & np.isfinite(backward)
    assert np.allclose(combined[both], forward[both])
    assert np.array_equal(combine_directions(forward, None), forward, equal_nan=True)


# ---- resample --------------------------------------------------------------------------------
def test_resample_hand_computed_values():
    # area average, 2 input pixels per output pixel
    assert np.allclose(resample(np.array([[0.0, 1, 2, 3]]), 1, 2), [[0.5, 2.5]])
    # area average, 3 per output pixel
    assert np.allclose(resample(np.arange(6.0)[None, :], 1, 3), [[1.0, 4.0]])
    # bilinear, 2x upsampling: centres at input -0.25, 0.25, 0.75, 1.25 (edges clamp)
    assert np.allclose(resample(np.array([[0.0], [1.0]]), 0.5, 1), [[0], [0.25], [0.75], [1]])


def test_resample_preserves_the_mean():
    rng = np.random.default_rng(6)
    image = rng.normal(size=(90, 60))
    down = resample(image, 3, 2.5)
    assert down.shape == (30, 24)
    assert down.mean() == pytest.approx(image.mean(), abs=1e-12)
    smooth = _blobs((30, 40), [(15, 20)], sigma=6.0)
    up = resample(smooth, 0.25, 0.5)
    assert up.shape == (120, 80)
    assert up.mean() == pytest.approx(smooth.mean(), rel=0.01)


def test_prepare_puts_a_blob_at_its_physical_position():
    """A blob at a known scanner position must land on the model pixel computed by hand, both
    ways through to_scan/from_scan. The scan's pixels are 0.05 nm wide and 0.2 nm tall, so one
    axis is area-averaged (2 → 1) and the other interpolated (1 → 2)."""
    width_nm, height_nm = 8.0, 6.0
    rows, cols = 30, 160
    scan = _scan(np.zeros((rows, cols)), (width_nm, height_nm))
    x_m, y_m = 5e-9 + 1.23e-9, -3e-9 - 0.87e-9  # blob position, scanner frame (offset 5, -3 nm)
    blob_row, blob_col = scan.scanner_to_pixel(x_m, y_m)
    sigma_nm = 0.4
    r, c = np.mgrid[:rows, :cols].astype(float)
    z_nm = 0.2 * np.exp(-(((r - blob_row) * 0.2) ** 2 + ((c - blob_col) * 0.05) ** 2) / (2 * sigma_nm**2))
    scan = _scan(z_nm, (width_nm, height_nm), backward=z_nm)

    settings = PreprocessSettings(steps=["fill_nan", "resample"])  # heights kept in nm
    prepared = prepare(scan, "si001h", settings)
    assert prepared.image.shape == (2, 60, 80)
    assert prepared.scale == pytest.approx((0.5, 2.0))

    # by hand: the frame's top-left corner is at (offset - size/2); 0.1 nm model pixels
    expected_col = (1.23 + width_nm / 2) / 0.1 - 0.5
    expected_row = (height_nm / 2 + 0.87) / 0.1 - 0.5
    image = prepared.image[0].astype(float)
    weight = np.clip(image - 0.5 * image.max(), 0, None)
    mr, mc = np.mgrid[: image.shape[0], : image.shape[1]]
    found_row, found_col = (weight * mr).sum() / weight.sum(), (weight * mc).sum() / weight.sum()
    assert found_row == pytest.approx(expected_row, abs=0.15)
    assert found_col == pytest.approx(expected_col, abs=0.15)

    back_row, back_col = prepared.to_scan(expected_row, expected_col)
    assert float(back_row) == pytest.approx(float(blob_row), abs=1e-9)
    assert float(back_col) == pytest.approx(float(blob_col), abs=1e-9)
    model_row, model_col = prepared.from_scan(np.array([blob_row, 0.0]), np.array([blob_col, 0.0]))
    assert model_row[0] == pytest.approx(expected_row, abs=1e-9)
    assert model_col[0] == pytest.approx(expected_col, abs=1e-9)
    assert np.allclose(prepared.to_scan(model_row, model_col), ([blob_row, 0.0], [blob_col, 0.0]))


# ---- normalise -------------------------------------------------------------------------------
def test_normalise_hand_computed():
    image = np.array([[1.0, 2, 3, 4, 100]])
    # median 3, MAD 1 → sigma 1.4826; 100 → 65 sigmas, clipped to 6
    assert np.allclose(normalise(image, clip=6.0), [[-2 / 1.4826, -1 / 1.4826, 0, 1 / 1.4826, 6.0]])
    valid = np.array([[True, True, True, True, False]])
    out = normalise(np.array([[1.0, 2, 3, 4, 5]]), valid)
    assert out[0, 4] == 0.0 and out[0, 1] == pytest.approx(-0.5 / (1.4826 * 1.0))
    assert np.array_equal(normalise(np.full((4, 4), 7.0)), np.zeros((4, 4)))


# ---- settings --------------------------------------------------------------------------------
def test_settings_reject_unknown_or_misplaced_steps():
    PreprocessSettings().check()
    with pytest.raises(ValueError, match="blur"):
        PreprocessSettings(steps=["fill_nan", "blur", "resample"]).check()
    with pytest.raises(ValueError, match="first"):
        PreprocessSettings(steps=["plane", "fill_nan", "resample"]).check()
    with pytest.raises(ValueError, match="resample"):
        PreprocessSettings(steps=["fill_nan", "plane"]).check()
    with pytest.raises(ConfigError, match="blur"):
        config_from_dict({"preprocess": {"steps": ["fill_nan", "blur", "resample"]}})


# ---- the chain on scans ----------------------------------------------------------------------
def test_prepare_marks_the_missing_top_rows_of_an_aborted_up_scan():
    """An 'up' scan is acquired bottom first: stopped early, its stored trailing rows are NaN,
    which the display frame puts at the top."""
    rng = np.random.default_rng(7)
    stored = rng.normal(scale=0.05, size=(40, 40))
    stored[30:] = np.nan  # the last 10 lines acquired never came
    display = stored_to_display(stored, "up", backward=False)
    scan = _scan(display, (4.0, 4.0), direction="up")  # 0.1 nm pixels: model = scan
    prepared = prepare(scan, get_surface("si001h"))
    expected = np.ones((40, 40), bool)
    expected[:10] = False
    assert np.array_equal(prepared.valid, expected)
    assert np.isfinite(prepared.image).all()
    assert np.array_equal(prepared.image[:, :10], np.zeros((2, 10, 40)))


@pytest.mark.parametrize("path", real_files(), ids=lambda p: p.name)
def test_prepare_every_real_file(path, manifest):
    facts = next(f for f in manifest["files"] if f["file"] == path.name)
    scan = read_sxm(path)
    surface = get_surface("si001h")
    prepared = prepare(scan, surface)
    width_nm, height_nm = (r * 1e9 for r in facts["range_m"])
    expected = (round(height_nm / surface.nm_per_px), round(width_nm / surface.nm_per_px))
    assert prepared.image.shape == (2, *expected)
    assert prepared.image.dtype == np.float32
    assert prepared.valid.shape == expected
    assert np.isfinite(prepared.image).all()
    assert prepared.surface == "si001h"
    nan_rows = facts["channels"][0]["nan_rows"]
    assert prepared.valid.mean() == pytest.approx(1 - nan_rows / facts["pixels"][1], abs=0.02)
    # the model frame spans the scan frame exactly
    top_left = prepared.to_scan(-0.5, -0.5)
    bottom_right = prepared.to_scan(expected[0] - 0.5, expected[1] - 0.5)
    assert np.allclose(top_left, (-0.5, -0.5))
    assert np.allclose(bottom_right, (facts["pixels"][1] - 0.5, facts["pixels"][0] - 0.5))


def test_prepare_aborted_real_file_valid_rows():
    scan = read_sxm(REAL / "stm_moire_10nm_aborted.sxm")  # rows 96..159 of 160 missing, 10 nm
    prepared = prepare(scan, "si001h")
    # model rows of 1.6 scan rows: row 59 spans scan rows 94.4-96.0 (valid), row 60 96.0-97.6
    assert np.array_equal(np.flatnonzero(prepared.valid.all(axis=1)), np.arange(60))
    assert not prepared.valid[60:].any()


# ---- the vectorised steps against the loops they replaced (issue 17) ---------------------------
# Reference copies of the step functions as they were before issue 17 (a design-matrix lstsq on
# every pixel, loops over rows and blocks, np.interp column by column). They live here only,
# to hold the faster code to the old results; do not import them elsewhere.
def _ref_robust_sigma(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad if mad > 0 else float(values.std())


def _ref_fill_nan_rows(image):
    image = np.asarray(image, dtype=float)
    valid = np.isfinite(image)
    if valid.all():
        return image.copy(), valid
    filled = image.copy()
    global_median = float(np.median(image[valid])) if valid.any() else 0.0
    for r in np.flatnonzero(~valid.all(axis=1)):
        row_valid = valid[r]
        filled[r, ~row_valid] = float(np.median(image[r, row_valid])) if row_valid.any() else global_median
    return filled, valid


def _ref_fit_plane(image, mask=None, *, trim=2.5, iterations=5):
    image = np.asarray(image, dtype=float)
    rows, cols = image.shape
    use = np.isfinite(image) if mask is None else (np.asarray(mask, bool) & np.isfinite(image))
    y = np.linspace(-1.0, 1.0, rows) if rows > 1 else np.zeros(1)
    x = np.linspace(-1.0, 1.0, cols) if cols > 1 else np.zeros(1)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    design = np.stack([np.ones(image.size), xx.ravel(), yy.ravel()], axis=1)
    z = image.ravel()
    keep = use.ravel().copy()
    if keep.sum() < 3:
        return np.full(image.shape, float(np.median(z[keep])) if keep.any() else 0.0)
    coef = np.zeros(3)
    for iteration in range(iterations + 1):
        coef, *_ = np.linalg.lstsq(design[keep], z[keep], rcond=None)
        if iteration == iterations:
            break
        residual = z - design @ coef
        spread = _ref_robust_sigma(residual[use.ravel()])
        if spread == 0:
            break
        centre = float(np.median(residual[use.ravel()]))
        new_keep = use.ravel() & (np.abs(residual - centre) <= trim * spread)
        if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return (design @ coef).reshape(image.shape)


def _ref_row_offsets(image, method="median_diff", mask=None):
    image = np.asarray(image, dtype=float)
    use = np.isfinite(image) if mask is None else (np.asarray(mask, bool) & np.isfinite(image))
    has_data = use.any(axis=1)
    offsets = np.zeros(image.shape[0])
    if method == "median":
        for r in np.flatnonzero(has_data):
            offsets[r] = np.median(image[r, use[r]])
    else:
        steps = np.zeros(image.shape[0])
        previous = None
        for r in np.flatnonzero(has_data):
            if previous is not None:
                both = use[r] & use[previous]
                if both.any():
                    steps[r] = np.median(image[r, both] - image[previous, both])
            previous = r
        offsets = np.cumsum(steps)
    if has_data.any():
        offsets = offsets - offsets[has_data].mean()
    return offsets


def _ref_runs(flags):
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8)))
    return list(zip(edges[::2], edges[1::2]))


def _ref_find_scars(image, threshold=3.0, max_width=2, min_length=16, mask=None):
    image = np.asarray(image, dtype=float)
    rows, cols = image.shape
    use = np.isfinite(image) if mask is None else (np.asarray(mask, bool) & np.isfinite(image))
    scars = np.zeros((rows, cols), dtype=bool)
    if rows < 3:
        return scars
    both = use[1:] & use[:-1]
    sigma = _ref_robust_sigma((image[1:] - image[:-1])[both])
    if sigma == 0:
        return scars
    limit = threshold * sigma
    for width in range(1, max_width + 1):
        for top in range(1, rows - width):
            above, below = top - 1, top + width
            block = image[top:top + width]
            block_ok = use[top:top + width].all(axis=0) & use[above] & use[below]
            up = ((block - image[above]).min(axis=0) > limit) & ((block - image[below]).min(axis=0) > limit)
            down = ((image[above] - block).min(axis=0) > limit) & ((image[below] - block).min(axis=0) > limit)
            for start, stop in _ref_runs((up | down) & block_ok):
                if stop - start >= min_length:
                    scars[top:top + width, start:stop] = True
    return scars


def _ref_repair_scars(image, threshold=3.0, max_width=2, min_length=16, mask=None):
    image = np.asarray(image, dtype=float)
    scars = _ref_find_scars(image, threshold, max_width, min_length, mask)
    repaired = image.copy()
    rows = np.arange(image.shape[0])
    for c in np.flatnonzero(scars.any(axis=0)):
        good = ~scars[:, c]
        repaired[~good, c] = np.interp(rows[~good], rows[good], image[good, c])
    return repaired


def _ref_normalise(image, valid=None, clip=6.0):
    image = np.asarray(image, dtype=float)
    use = np.isfinite(image) if valid is None else (np.asarray(valid, bool) & np.isfinite(image))
    if not use.any():
        return np.zeros(image.shape)
    spread = _ref_robust_sigma(image[use])
    if spread == 0:
        return np.zeros(image.shape)
    out = np.clip((image - float(np.median(image[use]))) / spread, -clip, clip)
    out[~use] = 0.0
    return out


def _ref_prepare(scan, surface_key):
    """The chain of ``prepare`` with the default settings, built from the reference steps."""
    surface = get_surface(surface_key)
    rows_out, cols_out = model_shape(scan, surface)
    scale = (scan.shape[0] / rows_out, scan.shape[1] / cols_out)
    channel = scan.topography()
    frames = channel.frames()
    frames = frames * 2 if len(frames) == 1 else frames
    filled_frames, valid = [], np.ones(scan.shape, bool)
    for frame in frames:
        image = apparent_height(frame, channel.unit)
        image = image - np.median(image[np.isfinite(image)])
        filled, frame_valid = _ref_fill_nan_rows(image)
        filled_frames.append(filled)
        valid &= frame_valid
    neutral = lambda im, ok: np.where(ok, im, np.median(im[ok]))  # noqa: E731
    outputs = []
    for image in filled_frames:
        image = neutral(image, valid)
        image = neutral(image - _ref_fit_plane(image, valid), valid)
        image = neutral(image - _ref_row_offsets(image, "median_diff", valid)[:, None], valid)
        image = neutral(_ref_repair_scars(image, mask=valid), valid)
        image = resample(image, scale[0], scale[1], (rows_out, cols_out))
        model_valid = resample(valid.astype(float), scale[0], scale[1], (rows_out, cols_out)) > 0.5
        image = neutral(image, model_valid)
        outputs.append(neutral(_ref_normalise(image, model_valid), model_valid))
    return np.stack(outputs).astype(np.float32), model_valid


def _artefact_image(seed: int, shape=(90, 110)) -> tuple[np.ndarray, np.ndarray]:
    """A lattice with a tilt, defects, line offsets, scars of 1-3 rows, isolated NaN pixels and
    missing rows; returns the image (NaN where missing) and its valid mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    image = 0.2 * np.cos(rows / 2) * np.cos(cols / 2) + 0.02 * cols - 0.03 * rows + 0.01 * rng.normal(size=shape)
    image += _blobs(shape, rng.uniform(0, shape[0], size=(8, 2)), height=1.0, sigma=2.0)
    image += rng.normal(scale=0.3, size=shape[0])[:, None]
    for width in (1, 2, 3):
        top, left = rng.integers(2, shape[0] - 5), rng.integers(0, shape[1] // 2)
        image[top:top + width, left:left + 30] += rng.choice([-1.5, 1.5])
    image[rng.integers(0, shape[0], 6), rng.integers(0, shape[1], 6)] = np.nan
    image[-7:-4] = np.nan
    return image, np.isfinite(image)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_steps_match_the_reference_loops(seed):
    image, valid = _artefact_image(seed)
    filled, ok = fill_nan_rows(image)
    ref_filled, ref_ok = _ref_fill_nan_rows(image)
    assert np.array_equal(ok, ref_ok) and np.allclose(filled, ref_filled, rtol=0, atol=1e-12)
    for mask in (None, valid):
        assert np.allclose(fit_plane(filled, mask), _ref_fit_plane(filled, mask), rtol=0, atol=1e-9)
        for method in ("median", "median_diff"):
            assert np.allclose(row_offsets(filled, method, mask), _ref_row_offsets(filled, method, mask),
                               rtol=0, atol=1e-12)
        for width in (1, 2, 3):
            scars = find_scars(filled, 3.0, width, 16, mask)
            assert np.array_equal(scars, _ref_find_scars(filled, 3.0, width, 16, mask))
            assert np.allclose(repair_scars(filled, 3.0, width, 16, mask),
                               _ref_repair_scars(filled, 3.0, width, 16, mask), rtol=0, atol=1e-12)
        assert np.allclose(normalise(filled, mask), _ref_normalise(filled, mask), rtol=0, atol=1e-12)
    assert find_scars(filled, 3.0, 3, 16, valid).any()  # the test image has scars to find
    assert robust_sigma(image) == pytest.approx(_ref_robust_sigma(image), rel=1e-12)


def test_plane_fit_of_a_single_row_or_column_is_the_minimum_norm_solution():
    image = np.tile(np.arange(7.0), (5, 1)) * 0.3 + 2.0
    row = np.zeros((5, 7), bool)
    row[2] = True
    assert np.allclose(fit_plane(image, row), _ref_fit_plane(image, row), atol=1e-9)
    column = np.zeros((5, 7), bool)
    column[:, 3] = True
    assert np.allclose(fit_plane(image, column), _ref_fit_plane(image, column), atol=1e-9)
    assert np.allclose(fit_plane(image[:1]), _ref_fit_plane(image[:1]), atol=1e-9)


@pytest.mark.parametrize("path", [REAL / "stm_moire_10nm_aborted.sxm", *real_files()[:2]], ids=lambda p: p.name)
def test_prepare_matches_the_reference_chain_on_real_files(path):
    scan = read_sxm(path)
    prepared = prepare(scan, "si001h")
    expected, expected_valid = _ref_prepare(scan, "si001h")
    assert np.array_equal(prepared.valid, expected_valid)
    assert np.allclose(prepared.image, expected, rtol=0, atol=1e-5)


def test_resample_at_scale_one_is_the_input_itself():
    image = np.random.default_rng(14).normal(size=(7, 9))
    same = resample(image, 1.0, 1.0)
    assert np.array_equal(same, image) and same is not image
    half = resample(image, 1.0, 0.5)  # one axis kept, the other interpolated
    assert half.shape == (7, 18) and np.array_equal(half[:, 1::2][:, :-1], 0.75 * image[:, :-1] + 0.25 * image[:, 1:])


@pytest.mark.parametrize("seed", [7_100_002, 7_100_005, 7_100_010])
def test_prepare_matches_the_reference_chain_on_simulated_scans(seed):
    """The training mix of artefacts (scars, line offsets, tilt, double tips) on simulated scans:
    384² with 87 missing lines and scars, 352² with scars and every pixel valid (the fast paths),
    288×160 with both: the faster chain gives the reference chain's model input."""
    from stmwatch.models.sim.simulate import training_scan

    scan, _ = training_scan("si001h", seed)
    prepared = prepare(scan, "si001h")
    expected, expected_valid = _ref_prepare(scan, "si001h")
    assert np.array_equal(prepared.valid, expected_valid)
    assert np.allclose(prepared.image, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(7,), (8,), (5, 6), (6, 5), (4, 3, 6)])
def test_median_is_numpys_median(shape):
    from stmwatch.models.robust import median

    values = np.random.default_rng(len(shape) * 10 + shape[-1]).normal(size=shape)
    assert median(values) == np.median(values)
    for axis in range(values.ndim):
        expected = np.median(values, axis=axis)
        assert np.array_equal(median(values, axis=axis), expected)
        scratch = values.copy()
        assert np.array_equal(median(scratch, axis=axis, overwrite=True), expected)


def test_is_flat_skips_missing_values_and_infinities():
    from stmwatch.drivers.scan import _is_flat

    frame = np.full((4, 5), 2.0)
    frame[0] = np.nan
    assert _is_flat(Channel("Z", "m", frame, frame.copy()))
    frame[1, 1] = np.inf  # not a measured value: ignored, as NaN is
    assert _is_flat(Channel("Z", "m", frame))
    assert _is_flat(Channel("Z", "m", np.full((2, 2), np.nan)))  # nothing acquired
    assert not _is_flat(Channel("Z", "m", np.full((2, 2), 1.0), np.full((2, 2), 1.5)))  # the two frames differ
    frame[2, 2] = 2.5
    assert not _is_flat(Channel("Z", "m", frame))
