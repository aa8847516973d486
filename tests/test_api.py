"""The Python API (``import stmwatch``): version, lazy import, read/analyse, xarray, and the
example in docs/api.md, run as written."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest

from .conftest import REAL, REPO


def test_import_is_light_and_has_the_version():
    code = ("import sys, stmwatch; print(stmwatch.__version__); "
            "print(sorted(m for m in ('torch', 'zmq', 'stmwatch.models.unet') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == version("stmwatch") and out[1] == "[]"
    cli = subprocess.run([sys.executable, "-m", "stmwatch.daemon", "--version"], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip() == f"stmwatch {version('stmwatch')}"


def test_the_command_lines_parser_does_not_import_torch():
    """``stmwatch --help`` builds every command's and target's parser: heavy imports stay in ``run``."""
    code = ("import sys; from stmwatch.daemon.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'zmq') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_public_names():
    import stmwatch

    assert stmwatch.read_sxm is __import__("stmwatch.drivers.sxm", fromlist=["read_sxm"]).read_sxm
    assert {"read_sxm", "analyse", "load_models", "Scan", "Analysis"} <= set(dir(stmwatch))
    with pytest.raises(AttributeError):
        stmwatch.no_such_name


def test_to_xarray_coordinates_in_metres_match_the_scan():
    pytest.importorskip("xarray")
    import stmwatch

    scan = stmwatch.read_sxm(REAL / "stm_gen5_au_mica_molecules.sxm")  # rotated 135.1 degrees
    defects = [{"x_px": 3.0, "y_px": 5.0, "x_m": 1e-9, "y_m": 2e-9, "label": "dimer_vacancy", "score": 0.9, "area_px": 7}]
    ds = scan.to_xarray(defects)
    nx, ny = scan.pixels
    assert ds["Z_forward"].dims == ("y", "x") and ds["Z_forward"].shape == (ny, nx)
    np.testing.assert_array_equal(ds["Z_backward"].values, scan.channel("Z").backward)
    assert ds["Z_forward"].attrs["units"] == "m"
    # the coordinates span the range, pixel centres, centred on the offset; y falls down the rows
    pitch = scan.range_m[0] / nx
    assert ds.x.values[-1] - ds.x.values[0] == pytest.approx(scan.range_m[0] - pitch)
    assert ds.x.values.mean() == pytest.approx(scan.offset_m[0]) and ds.y.values[0] > ds.y.values[-1]
    # per-pixel scanner coordinates agree with the one converter
    x, y = scan.pixel_to_scanner(10, 20)
    assert float(ds.x_scanner[10, 20]) == pytest.approx(float(x)) and float(ds.y_scanner[10, 20]) == pytest.approx(float(y))
    table = ds[["defect_x_m", "defect_row", "defect_col", "defect_label"]].to_dataframe()
    assert table.iloc[0].to_dict() == {"defect_x_m": 1e-9, "defect_row": 5.0, "defect_col": 3.0, "defect_label": "dimer_vacancy"}
    assert ds.attrs["angle_deg"] == scan.angle_deg


def test_to_xarray_without_xarray_says_how_to_get_it(monkeypatch):
    import stmwatch

    monkeypatch.setitem(sys.modules, "xarray", None)  # as if not installed
    scan = stmwatch.read_sxm(REAL / "stm_moire_10nm.sxm")
    with pytest.raises(ImportError, match=re.escape("pip install 'stmwatch[xarray]'")):
        scan.to_xarray()


def test_analyse_finds_the_simulated_defects(tmp_path):
    import stmwatch
    from stmwatch.models.sim.simulate import simulate_scan

    scan, truth = simulate_scan("si001h", 11, pixels=(128, 128), n_defects=5)
    models = stmwatch.load_models("si001h", backend="torch")
    analysis = stmwatch.analyse(stmwatch.write_sxm(scan, tmp_path / "a.sxm"), models=models)
    assert isinstance(analysis, stmwatch.Analysis)
    found = np.array([[d.x_m, d.y_m] for d in analysis.defects])
    assert len(truth.defects) == 5
    for t in truth.defects:  # every true defect within 0.5 nm of a found one
        assert np.hypot(found[:, 0] - t.x_m, found[:, 1] - t.y_m).min() < 0.5e-9
    with pytest.raises(ValueError, match="loaded for surface 'si001h'"):
        stmwatch.analyse(scan, surface="ge001", models=models)


def test_docs_api_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("xarray")
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/api.md has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/api.md", "exec"), {"__name__": "docs_api"})
    assert (tmp_path / "scan.sxm").exists()
