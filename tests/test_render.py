"""Rendering: colour maps by hand, and overlays decoded with Pillow to find the drawn outline."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import read_sxm
from stmwatch.models.defects import Defect
from stmwatch.models.render import (
    BACKGROUND,
    INVALID_GREY,
    LABEL_COLOURS,
    MISSING_RED,
    OUTLINE,
    crowded,
    format_length_nm,
    missing_row_ranges,
    nice_length,
    scan_description,
    grid_png,
    label_colours,
    overlay_png,
    to_rgb,
)

from .conftest import REAL


def _decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _defect(row: float, col: float, label: str, area_px: float = 20.0) -> Defect:
    return Defect(row=row, col=col, x_m=0.0, y_m=0.0, area_px=area_px, score=0.9, label=label)


def test_to_rgb_afmhot_by_hand():
    image = np.array([[0.0, 0.5, 1.0, np.nan]])
    rgb = to_rgb(image, percentiles=(0, 100))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    # afmhot: r = 2t, g = 2t - 0.5, b = 2t - 1, clipped to [0, 1]
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [255, 128, 0]
    assert rgb[0, 2].tolist() == [255, 255, 255]
    assert rgb[0, 3].tolist() == list(INVALID_GREY)


def test_to_rgb_robust_contrast_and_invalid_mask():
    image = np.linspace(0, 1, 1000).reshape(10, 100)
    image[0, 0] = 1e6  # one spike must not wash out the rest
    valid = np.ones(image.shape, bool)
    valid[5] = False
    rgb = to_rgb(image, valid, colormap="gray")
    assert rgb[9, 99].tolist() == [255, 255, 255]  # above the 99th percentile: white
    assert rgb[0, 1].tolist() == [0, 0, 0]  # below the 1st percentile: black
    middle = rgb[4, 50, 0]
    assert 100 < middle < 155
    assert (rgb[5] == INVALID_GREY).all()
    assert (to_rgb(np.full((3, 3), 2.0)) == [255, 128, 0]).all()  # constant: middle of the map
    with pytest.raises(ValueError, match="colormap"):
        to_rgb(image, colormap="jet")


def test_overlay_outlines_a_defect_at_the_right_place():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(64, 64))
    defect = _defect(16, 48, "vacancy", area_px=20.0)
    png = overlay_png(image, [defect], None, labels=False, scale_to=512)
    rgb = _decode(png)
    header = rgb.shape[0] - 512
    assert rgb.shape[1] > 512 and 0 < header < 160  # the image, then the colour bar's column
    magenta = LABEL_COLOURS[2]  # vacancy, si001h's third class
    body = rgb[header:, :512]
    ys, xs = np.nonzero((body == magenta).all(axis=2))
    assert len(xs) > 50
    # 8 screen pixels per image pixel; the pixel centre is at (index + 0.5)
    centre_x, centre_y = (48 + 0.5) * 8, (16 + 0.5) * 8
    radius = 1.5 * math.sqrt(20 / math.pi) * 8
    distance = np.hypot(xs - centre_x, ys - centre_y)
    assert distance.min() > radius - 4 and distance.max() < radius + 2
    assert xs.mean() == pytest.approx(centre_x, abs=2) and ys.mean() == pytest.approx(centre_y, abs=2)
    # the header holds the title (text colour) and the legend swatch (the label's colour)
    top = rgb[:header]
    assert (top.min(axis=2) > 150).sum() > 30  # antialiased text: light grey pixels
    assert (top == magenta).all(axis=2).sum() > 50
    assert (top == BACKGROUND).all(axis=2).mean() > 0.5


def test_overlay_labels_colours_and_file(tmp_path):
    image = np.zeros((40, 40))
    defects = [_defect(10, 10, "vacancy"), _defect(30, 30, "adatom"), _defect(30, 10, "adatom")]
    path = tmp_path / "overlay.png"
    png = overlay_png(image, defects, path, labels=True, scale_to=400)
    assert path.read_bytes() == png
    colours = label_colours(["vacancy", "adatom"])  # si001h's third class, tio2110's fourth
    assert colours == {"vacancy": LABEL_COLOURS[2], "adatom": LABEL_COLOURS[3]}
    assert label_colours(["vacancy", "dangling_bond", "unknown", "my_class"]) == {
        "dangling_bond": LABEL_COLOURS[0], "vacancy": LABEL_COLOURS[2], "unknown": LABEL_COLOURS[-1],
        "my_class": LABEL_COLOURS[4]}
    rgb = _decode(png)
    header = rgb.shape[0] - 400
    body = rgb[header:]
    outline = (body == colours["vacancy"]).all(axis=2)  # magenta
    ys, xs = np.nonzero(outline)
    assert ys.mean() < 200 and xs.min() < 105  # near (10, 10) → (105, 105) on screen, text to the right
    without_text = _decode(overlay_png(image, defects, None, labels=False, scale_to=400))
    assert (without_text[header:] == colours["vacancy"]).all(axis=2).sum() < outline.sum()


def test_overlay_of_a_scan_keeps_its_physical_aspect():
    frame = np.random.default_rng(1).normal(size=(30, 160)).astype(np.float32) * 1e-10
    scan = Scan([Channel("Z", "m", forward=frame)], pixels=(160, 30), range_m=(8e-9, 4e-9))
    rgb = _decode(overlay_png(scan, [_defect(15, 80, "dangling_bond")], None, scale_to=600))
    header = rgb.shape[0] - 300
    assert rgb.shape[1] > 600 and 0 < header < 160  # 8 × 4 nm → 600 × 300 screen pixels (+ colour bar)
    assert (rgb[header:, :600] != BACKGROUND).any(axis=2).all(axis=0).mean() > 0.99  # the image spans 600 columns
    assert (rgb[header + 150, 600:604] == BACKGROUND).all()


def test_overlay_of_a_real_aborted_scan(tmp_path):
    scan = read_sxm(REAL / "stm_moire_10nm_aborted.sxm")  # rows 96..159 of 160 never measured
    rgb = _decode(overlay_png(scan, [], tmp_path / "o.png", scale_to=320))
    header = rgb.shape[0] - 320
    body = rgb[header:, :320]
    # the missing bottom (screen rows 192..319) is grey, hatched red; nothing above it
    grey, red = (body == INVALID_GREY).all(axis=2), (body == MISSING_RED).all(axis=2)
    assert grey[200:300, 10:310].mean() > 0.7 and red[200:300, 10:310].mean() > 0.05
    assert not grey[:188].any() and not red[:188].any()
    # and the header has a red line (saying which rows: see test_partial_rows_and_labels)
    top = rgb[:header].astype(int)
    assert ((top[..., 0] > 180) & (top[..., 1] < 100) & (top[..., 2] < 100)).sum() > 50
    assert missing_row_ranges(scan.topography().forward) == [(96, 159)]


def test_grid_png_layout(tmp_path):
    images = [np.random.default_rng(i).normal(size=(32, 48)) for i in range(3)]
    png = grid_png(images, ["a", "b", "c"], tmp_path / "grid.png", tile=100)
    rgb = _decode(png)
    assert (tmp_path / "grid.png").read_bytes() == png
    font_size, gap = 10, 6
    caption = font_size + 8
    assert rgb.shape[:2] == (2 * (100 + caption + gap) + gap, 2 * (100 + gap) + gap)  # 2 × 2 tiles
    # each of the three tiles has picture in it, the fourth place is empty
    for index in range(4):
        left = gap + (index % 2) * (100 + gap)
        top = gap + (index // 2) * (100 + caption + gap) + caption
        centre = rgb[top + 30, left + 50]
        assert (centre.tolist() != list(BACKGROUND)) == (index < 3)
    with pytest.raises(ValueError):
        grid_png(images, ["a"], None)


def test_notes_are_wrapped_into_the_header_in_yellow():
    from stmwatch.models.render import NOTE, _wrap

    assert _wrap("aa bb cc dd", 5, len) == ["aa bb", "cc dd"]
    assert _wrap("a verylongword b", 4, len) == ["a", "verylongword", "b"]
    image = np.random.default_rng(0).normal(size=(40, 40))
    plain = _decode(overlay_png(image, [], None, scale_to=400))
    note = "double tip: a second apex images every feature again 1.20 nm away " * 3  # longer than 400 px
    noted = _decode(overlay_png(image, [], None, scale_to=400, notes=[note]))
    extra = noted.shape[0] - plain.shape[0]
    line = max(12, 400 // 48) + 8
    assert extra >= 2 * line and extra % line == 0  # wrapped onto whole extra lines
    assert (noted[:extra + 40] == NOTE).all(axis=2).any() and not (plain == NOTE).all(axis=2).any()
    assert (noted[-400:] == plain[-400:]).all()  # the picture itself is unchanged


def test_partial_rows_and_labels():
    frame = np.zeros((10, 4))
    frame[[0, 1, 5, 9]] = np.nan
    assert missing_row_ranges(frame) == [(0, 1), (5, 5), (9, 9)]
    assert missing_row_ranges(np.zeros((3, 3))) == []
    assert [nice_length(t) for t in (0.37, 1.0, 4.9, 18.2, 2000)] == [0.2, 1.0, 2.0, 10.0, 2000.0]
    assert [format_length_nm(v) for v in (0.2, 5.0, 2000.0)] == ["200 pm", "5 nm", "2 um"]
    scan = read_sxm(REAL / "stm_moire_10nm.sxm")  # header: BIAS 2.688E-1, Z-CONTROLLER set point 3.000E-11 A
    assert scan_description(scan) == "Z forward  |  bias 269 mV  |  setpoint 30 pA"


def test_scale_bar_is_as_long_as_its_label_says():
    """10 nm wide at 500 screen pixels: the bar is 2 nm = 100 white pixels on its row."""
    frame = np.random.default_rng(2).normal(size=(50, 50)).astype(np.float32) * 1e-11
    scan = Scan([Channel("Z", "m", forward=frame)], pixels=(50, 50), range_m=(1e-8, 1e-8))
    rgb = _decode(overlay_png(scan, [], None, scale_to=500))
    body = rgb[rgb.shape[0] - 500:, :500]
    white = (body == 255).all(axis=2)
    runs = [int(white[r].sum()) for r in range(440, 500)]
    assert max(runs) in (100, 101)


def test_markers_have_a_dark_rim_and_numbers_go_when_crowded():
    bright = np.ones((64, 64))  # a pale image: the white 'unknown' ring needs its rim
    rgb = _decode(overlay_png(bright, [_defect(32, 32, "unknown", area_px=30)], None, labels=False, scale_to=512))
    body = rgb[rgb.shape[0] - 512:, :512]
    row = body[int(32.5 * 8)]
    assert (row == OUTLINE).all(axis=1).sum() >= 4  # black on both sides of both crossings
    few = np.array([[0, 0], [100, 0], [0, 100]], float)
    assert not crowded(few, 30) and crowded(few, 150)
    assert crowded(np.random.default_rng(0).uniform(0, 768, (200, 2)), 10)  # too many to number
    # 200 markers: the header says they are not numbered, and the picture has no per-marker text
    image = np.random.default_rng(3).normal(size=(200, 200))
    many = [_defect(r, c, "vacancy", area_px=4) for r, c in np.random.default_rng(4).uniform(5, 195, (200, 2))]
    with_numbers = _decode(overlay_png(image, many, None, labels=True, scale_to=512))
    without = _decode(overlay_png(image, many, None, labels=False, scale_to=512))
    assert with_numbers.shape[0] > without.shape[0]  # one more header line: "too dense to number"
    assert (with_numbers[-512:] == without[-512:]).all()
