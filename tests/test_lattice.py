"""The surface check (models/lattice.py): simulated scans of each surface show their rows, a real
moiré scan does not show Si(001):H rows, and the analyser warns about it."""
import logging

import numpy as np
import pytest

from stmwatch.drivers.sxm import read_sxm
from stmwatch.models.eval_segment import held_out_scan
from stmwatch.models.lattice import ROW_CONTRAST_MIN, row_contrast, surface_mismatch
from stmwatch.models.preprocess import prepare
from stmwatch.models.surfaces import SURFACES, get_surface

from .conftest import REAL


def test_row_contrast_of_a_grating_and_of_noise():
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:256, 0:256] * 0.1  # nm
    valid = np.ones((256, 256), bool)
    grating = np.cos(2 * np.pi * (0.6 * rows + 0.8 * cols) / 0.768) + rng.normal(0, 1, (256, 256))
    assert row_contrast(grating, valid, 0.768, 0.1) > 10  # 19.6
    assert row_contrast(grating, valid, 0.649, 0.1) < 2  # another surface's period: not on its ring
    noise = rng.normal(0, 1, (256, 256))  # a flat spectrum: ring and surroundings alike
    assert 0.8 < row_contrast(noise, valid, 0.768, 0.1) < 1.25
    assert np.isnan(row_contrast(noise, np.zeros_like(valid), 0.768, 0.1))  # nothing acquired
    assert np.isnan(row_contrast(noise[:40], valid[:40], 0.768, 0.1))  # 4 nm < 6 periods: too small to tell
    part = valid.copy()
    part[70:] = False  # an aborted scan: the acquired 7 nm x 25.6 nm band is judged on its own
    assert row_contrast(grating, part, 0.768, 0.1) > 5


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_simulated_scans_with_every_artefact_show_their_rows(surface):
    for i in range(3):
        scan, _ = held_out_scan(surface, i, seed=8_700_000)
        assert surface_mismatch(prepare(scan, surface), get_surface(surface)) is None


def test_a_tio2_scan_processed_as_si001h_is_named():
    """TiO2(110)'s rows (0.649 nm) leak onto Si(001):H's ring (0.768 nm) enough to pass the row check
    alone; their own ring is far clearer, and the warning names the surface the scan looks like."""
    surface = get_surface("si001h")
    for i in (1, 3, 4):  # scans whose Si(001):H row contrast passes (0.73-1.41) though they are TiO2(110)
        scan, _ = held_out_scan("tio2110", i, seed=8_700_000)
        prepared = prepare(scan, "si001h")
        own = row_contrast(prepared.image[0], prepared.valid, surface.row_nm, 0.1)
        tio2 = row_contrast(prepared.image[0], prepared.valid, 0.649, 0.1)
        assert own > 0.6 and tio2 >= 3 * own
        warning = surface_mismatch(prepared, surface)
        assert warning and "0.649 nm apart, as on TiO2(110)" in warning and "not 0.768 nm" in warning
    # Ge(001)'s rows are 4 % from Si(001):H's: never named, one cannot tell them apart this way
    scan, _ = held_out_scan("ge001", 0, seed=8_700_000)
    assert surface_mismatch(prepare(scan, "si001h"), surface) is None


def test_a_moire_scan_is_not_si001h_and_the_analyser_says_so(caplog):
    from stmwatch.daemon.config import load_config
    from stmwatch.models.load import load_analyser

    scan = read_sxm(REAL / "stm_moire_10nm.sxm")
    prepared = prepare(scan, "si001h")
    surface = get_surface("si001h")
    assert row_contrast(prepared.image[0], prepared.valid, surface.row_nm, 0.1) < ROW_CONTRAST_MIN
    analyser = load_analyser(load_config(None))
    with caplog.at_level(logging.INFO, logger="stmwatch.models.analyse"):
        analysis = analyser.analyse(scan)
    assert [w for w in analysis.warnings if "Si(001):H rows" in w]
    assert any("stm_moire_10nm.sxm" in r.message and "Si(001):H rows" in r.message for r in caplog.records)
    simulated, _ = held_out_scan("si001h", 0, seed=8_700_000)
    assert not [w for w in analyser.analyse(simulated).warnings if "rows" in w]


@pytest.mark.parametrize("name, size", [("afm_gen4_A151216.sxm", "2 x 2"), ("stm_gen5_au_mica_molecules.sxm", "4 x 4")])
def test_tiny_scans_of_other_surfaces_are_flagged(name, size):
    """The 2 nm AFM and 4 nm Au/mica scans gave one large 'unknown' defect with no word that
    they are no Si(001):H; now they say the scan is too small to check."""
    from stmwatch.daemon.config import load_config
    from stmwatch.models.load import load_analyser

    analysis = load_analyser(load_config(None)).analyse(read_sxm(REAL / name))
    assert [w for w in analysis.warnings if f"this {size} nm scan is too small to check that it shows Si(001):H" in w]
    # a scan just wide enough (6 row periods = 4.6 nm) is judged on its rows instead
    scan, _ = held_out_scan("si001h", 0, seed=8_700_000)
    assert surface_mismatch(prepare(scan, "si001h"), get_surface("si001h")) is None


def test_all_unknown_defects_are_flagged():
    from stmwatch.models.analyse import unlike_every_class
    from stmwatch.models.defects import Defect

    surface = get_surface("ge001")
    unknown = [Defect(row=1, col=i, x_m=0, y_m=0, area_px=9, score=0.9, label="unknown") for i in range(3)]
    assert "all 3 defects are unlike every Ge(001) class" in unlike_every_class(unknown, surface)
    assert unlike_every_class(unknown[:2], surface) is None  # one or two: no reason to ask
    mixed = unknown + [Defect(row=1, col=9, x_m=0, y_m=0, area_px=9, score=0.9, label="dimer_vacancy")]
    assert unlike_every_class(mixed, surface) is None and unlike_every_class([], surface) is None
