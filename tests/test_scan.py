"""The one place that converts display pixels ↔ scanner metres, against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from stmwatch.drivers.scan import Channel, Scan


def scan_with(angle: float, pixels=(4, 2), range_m=(4e-9, 2e-9), offset=(10e-9, 20e-9)) -> Scan:
    nx, ny = pixels
    return Scan(channels=[Channel("Z", "m", forward=np.zeros((ny, nx), np.float32))], pixels=pixels,
                range_m=range_m, offset_m=offset, angle_deg=angle)


def test_unrotated_pixel_centres():
    scan = scan_with(0.0)  # 4 x 2 pixels of 1 nm: centres at u = -1.5..1.5 nm, v = +0.5 (top), -0.5 nm
    x, y = scan.pixel_to_scanner(0, 0)
    assert (x, y) == pytest.approx((8.5e-9, 20.5e-9))
    x, y = scan.pixel_to_scanner(1, 3)
    assert (x, y) == pytest.approx((11.5e-9, 19.5e-9))


def test_clockwise_angle_turns_the_frame_right_edge_downwards():
    """Nanonis Scan.FrameSet: angle > 0 turns the frame clockwise. After +90 deg the frame's
    right-hand edge points down (-y) and its top edge points right (+x)."""
    scan = scan_with(90.0)
    x, y = scan.pixel_to_scanner(0.5, 3)  # on the frame's horizontal axis, u = +1.5 nm, v = 0
    assert (x, y) == pytest.approx((10e-9, 18.5e-9), abs=1e-18)
    x, y = scan.pixel_to_scanner(0, 1.5)  # on the vertical axis, u = 0, v = +0.5 nm
    assert (x, y) == pytest.approx((10.5e-9, 20e-9), abs=1e-18)


def test_30_degrees_by_hand():
    scan = scan_with(30.0, pixels=(2, 2), range_m=(2e-9, 2e-9), offset=(0.0, 0.0))
    x, y = scan.pixel_to_scanner(0, 1)  # u = +0.5 nm, v = +0.5 nm
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    assert (x, y) == pytest.approx((0.5e-9 * c + 0.5e-9 * s, -0.5e-9 * s + 0.5e-9 * c))


@pytest.mark.parametrize("angle", [0.0, 17.0, -135.1, 90.0])
def test_round_trip(angle):
    scan = scan_with(angle, pixels=(511, 60), range_m=(2e-7, 3e-8))
    rows, cols = np.meshgrid(np.arange(0, 60, 7.5), np.arange(0, 511, 33.3), indexing="ij")
    x, y = scan.pixel_to_scanner(rows, cols)
    back_r, back_c = scan.scanner_to_pixel(x, y)
    np.testing.assert_allclose(back_r, rows, atol=1e-9)
    np.testing.assert_allclose(back_c, cols, atol=1e-9)


def test_frame_shape_is_checked():
    with pytest.raises(ValueError, match="rows, columns"):
        Scan(channels=[Channel("Z", "m", forward=np.zeros((4, 2), np.float32))], pixels=(4, 2), range_m=(1e-9, 1e-9))


def test_constant_height_scan_images_the_current():
    """stm_gen5_au_mica_molecules.sxm was taken at constant height: Z is one value (manifest:
    nanmin == nanmax), the image is in the Current channel."""
    from stmwatch.drivers.sxm import read_sxm

    from .conftest import REAL

    assert read_sxm(REAL / "stm_gen5_au_mica_molecules.sxm").topography().name == "Current"
    assert read_sxm(REAL / "stm_moire_10nm.sxm").topography().name == "Z"
