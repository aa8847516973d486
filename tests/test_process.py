"""``stmwatch process``: JSON Lines against simulator truth, errors, tables, PNG overlays, real files."""
from __future__ import annotations

import json
from pathlib import Path
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from stmwatch.daemon.cli import main
from stmwatch.drivers.sxm import read_sxm
from stmwatch.models.eval_segment import DetectionScore
from stmwatch.models.sim.simulate import Artefacts, read_truth, simulate_scan, write_example
from stmwatch.models.surfaces import get_surface

from .conftest import BAD, real_files

KEYS = {"file", "scan", "defects", "counts", "timing_ms", "warnings"}
SCAN_KEYS = {"pixels", "range_m", "offset_m", "angle_deg", "direction"}
DEFECT_KEYS = {"x_px", "y_px", "x_m", "y_m", "label", "score", "area_px"}
TIMING_KEYS = {"read", "preprocess", "segment", "classify", "total"}
LABELS = {"defect", "unknown", *get_surface("si001h").classes}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    """A config whose engine cache is private to the test run."""
    folder = tmp_path_factory.mktemp("cfg")
    path = folder / "config.toml"
    path.write_text(f'[models]\nengine_cache = "{folder / "engines"}"\nsurface = "si001h"\n')
    return str(path)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> list:
    """Two simulated scans with all artefacts, written as .sxm with their truth."""
    folder = tmp_path_factory.mktemp("sim")
    paths = []
    for i, (direction, angle) in enumerate([("up", 25.0), ("down", -60.0)]):
        scan, truth = simulate_scan("si001h", 9_100_000 + i, pixels=(256, 256), range_nm=25.0, offset_m=(3e-8, -5e-8),
                                    angle_deg=angle, direction=direction, artefacts=Artefacts.all())
        paths.append(write_example(scan, truth, folder / f"sim{i}"))
    return paths


def test_json_lines_match_truth_and_a_bad_file_gives_exit_2(simulated, config, capsys):
    bad = BAD / "truncated_half_data.sxm"
    rc = main(["process", "--json", "--config", config, str(simulated[0]), str(bad), str(simulated[1])])
    out, err = capsys.readouterr()
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in simulated]
    score = DetectionScore()
    for line, path in zip(lines, simulated):
        assert set(line) == KEYS and set(line["scan"]) == SCAN_KEYS and set(line["timing_ms"]) == TIMING_KEYS
        assert isinstance(line["warnings"], list) and all(isinstance(w, str) for w in line["warnings"])
        # "defect" without a classifier; a class of the surface (or "unknown") with one
        assert all(set(d) == DEFECT_KEYS and d["label"] in LABELS for d in line["defects"])
        assert line["counts"] == dict(sorted(Counter(d["label"] for d in line["defects"]).items()))
        scan = read_sxm(path)
        assert line["scan"] == json.loads(json.dumps(scan.geometry()))
        for d in line["defects"]:  # pixels and metres agree through the one converter
            x, y = scan.pixel_to_scanner(d["y_px"], d["x_px"])
            assert abs(x - d["x_m"]) < 1e-12 and abs(y - d["y_m"]) < 1e-12
        truth = read_truth(path)
        score.add(np.array([(d["x_m"], d["y_m"]) for d in line["defects"]]).reshape(-1, 2),
                  np.array([(d.x_m, d.y_m) for d in truth.defects]).reshape(-1, 2), 0.5e-9)
    # a small set: looser than the held-out figures of the model card
    assert score.f1 >= 0.8, (score.tp, score.fp, score.fn)
    assert max(score.median_dx, score.median_dy) < 0.15e-9


def test_table_and_png_overlays(simulated, config, tmp_path, capsys):
    single = tmp_path / "one.png"
    assert main(["process", "--config", config, "--backend", "torch", str(simulated[0]), "--png", str(single)]) == 0
    out = capsys.readouterr().out
    assert simulated[0].name in out and "defects" in out
    with Image.open(single) as im:
        assert im.format == "PNG" and im.size[0] >= 320
    folder = tmp_path / "many"
    assert main(["process", "--config", config, "--json", *map(str, simulated), "--png", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["sim0.png", "sim1.png"]
    # two files of one name would overwrite each other's overlay: refused before any work
    twin = tmp_path / "other_day" / simulated[0].name
    twin.parent.mkdir()
    twin.write_bytes(simulated[0].read_bytes())
    assert main(["process", "--config", config, str(simulated[0]), str(twin), "--png", str(tmp_path / "twins")]) == 1
    assert "have one name" in capsys.readouterr().err and not (tmp_path / "twins").exists()
    with pytest.raises(SystemExit):  # a negative row count is an argument error
        main(["process", "--config", config, str(simulated[0]), "--rows", "-1"])


@pytest.mark.skipif(not real_files(), reason="no real files in ../shared/data/real")
def test_real_files_process_without_error(config, capsys):
    files = [str(p) for p in real_files()]
    rc = main(["process", "--json", "--config", config, *files])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == len(files)
    for line in lines:
        scan = read_sxm(line["file"])
        acquired = ~np.isnan(scan.topography().frames()[0]).all(axis=1)
        ny, nx = scan.shape
        for d in line["defects"]:
            assert -0.5 <= d["x_px"] <= nx - 0.5 and -0.5 <= d["y_px"] <= ny - 0.5
            assert acquired[int(round(d["y_px"]))]  # nothing found in lines never acquired (partial scans)
    # what the operator should know goes to stderr beside the JSON: the moire scan is no Si(001):H,
    # the 200 nm survey scans have pixels far too coarse (3.3 nm between lines) for ~1 nm defects
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any("stm_moire_10nm.sxm:" in w and "Si(001):H rows" in w for w in warnings), warnings
    assert any("stm_A250320.sxm:" in w and "coarser than max_nm_per_px" in w for w in warnings), warnings
    # ... and into each file's JSON line, for scripts; the same sentences
    by_name = {Path(line["file"]).name: line["warnings"] for line in lines}
    assert any("Si(001):H rows" in w for w in by_name["stm_moire_10nm.sxm"]), by_name
    assert any("coarser than max_nm_per_px" in w for w in by_name["stm_A250320.sxm"]), by_name
    assert sorted(f"warning: {line['file']}: {w}" for line in lines for w in line["warnings"]) == sorted(warnings)


def test_support_folder_option(simulated, config, tmp_path, capsys):
    from stmwatch.models.load import SUPPORT_DIR

    assert main(["process", "--json", "--config", config, "--support", str(tmp_path / "missing"), str(simulated[0])]) == 1
    assert "support set" in capsys.readouterr().err
    support = SUPPORT_DIR / "si001h"
    if not support.is_dir():
        pytest.skip("no shipped support set")
    assert main(["process", "--json", "--config", config, "--support", str(support), str(simulated[0])]) == 0
    line = json.loads(capsys.readouterr().out)
    classes = {p.name for p in support.iterdir() if p.is_dir()}
    assert {d["label"] for d in line["defects"]} <= classes | {"unknown", "defect"}
