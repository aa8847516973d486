"""``stmwatch support add``: the crop is cut at the clicked defect, at the model's 0.1 nm/px."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stmwatch.daemon.cli import main
from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import write_sxm
from stmwatch.models.clicks import unclicked_at_polarity
from stmwatch.models.fewshot.crops import CropSet

SIZE_NM = 16.0
BUMP_NM = (5.0, 11.0)  # (down from the top, right from the left edge), nm
SIGMA_NM = 0.4


def bump_scan(px: int, seed: int = 0) -> Scan:
    """A ``SIZE_NM`` square scan of ``px`` × ``px`` pixels: a Gaussian bump (height 0.025 nm, σ
    0.4 nm) at ``BUMP_NM`` on 0.005 nm of white noise, Z in metres, forward and backward alike."""
    rng = np.random.default_rng(seed)
    centres = (np.arange(px) + 0.5) * SIZE_NM / px  # nm, pixel centres
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    z = 0.025 * np.exp(-((yy - BUMP_NM[0]) ** 2 + (xx - BUMP_NM[1]) ** 2) / (2 * SIGMA_NM ** 2))
    z = (z + rng.normal(0, 0.005, z.shape)) * 1e-9
    ch = Channel("Z", "m", forward=z.astype(np.float32), backward=z.astype(np.float32))
    return Scan([ch], pixels=(px, px), range_m=(SIZE_NM * 1e-9, SIZE_NM * 1e-9))


def bright_centre(crop: np.ndarray) -> tuple[float, float]:
    """Centroid (row, col) of the pixels of ``crop[0]`` above half its maximum."""
    mask = crop[0] > 0.5 * crop[0].max()
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())


def add(tmp_path, px: int, at_nm: tuple[float, float], label: str) -> np.ndarray:
    path = write_sxm(bump_scan(px), tmp_path / f"scan{px}.sxm")
    row, col = (at_nm[0] * px / SIZE_NM - 0.5, at_nm[1] * px / SIZE_NM - 0.5)  # nm -> scan pixel index
    assert main(["support", "add", "--surface", "si001h", "--label", label, "--scan", str(path),
                 "--at", f"{row},{col}", "--support", str(tmp_path / "support")]) == 0
    (saved,) = (tmp_path / "support" / label).glob(f"scan{px}_*.npy")
    return np.load(saved)


def test_crop_is_centred_on_the_defect_at_model_scale_whatever_the_scan_pixels(tmp_path):
    for px in (320, 80):  # 0.05 and 0.2 nm per scan pixel; the model sees 0.1 nm per pixel
        crop = add(tmp_path, px, BUMP_NM, f"bump{px}")
        assert crop.shape == (2, 32, 32) and crop.dtype == np.float32
        r, c = bright_centre(crop)
        assert abs(r - 16) <= 1.0 and abs(c - 16) <= 1.0  # crops_at centres pixel 16 (of 0..31)
        # clicking 1 nm left of and 0.5 nm above the bump puts it 10 model px right, 5 px down
        off = add(tmp_path, px, (BUMP_NM[0] - 0.5, BUMP_NM[1] - 1.0), f"off{px}")
        r, c = bright_centre(off)
        assert abs(r - 21) <= 1.0 and abs(c - 26) <= 1.0


def test_support_list_counts_examples_by_polarity(tmp_path, capsys):
    add(tmp_path, 80, BUMP_NM, "bump")  # bias unknown
    scan = bump_scan(80)
    scan.bias_v = -1.7
    path = write_sxm(scan, tmp_path / "filled.sxm")
    assert main(["support", "add", "--surface", "si001h", "--label", "bump", "--scan", str(path),
                 "--at", "24.5,54.5", "--support", str(tmp_path / "support")]) == 0
    assert "-1.7 V, filled states" in capsys.readouterr().out
    sidecar = json.loads(next((tmp_path / "support" / "bump").glob("filled_*.json")).read_text())
    assert sidecar["bias_v"] == pytest.approx(-1.7) and sidecar["row"] == 24.5 and sidecar["scan"].endswith("filled.sxm")
    capsys.readouterr()
    assert main(["support", "list", "--surface", "si001h", "--support", str(tmp_path / "support")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split("\t") == ["bump", "2", "1", "0", "1"]  # 2 examples: 1 filled-state, 1 bias unknown


def test_classes_clicked_only_at_the_other_polarity_are_named():
    support = CropSet("si001h", {k: np.zeros((n, 2, 32, 32), np.float32) for k, n in (("a", 2), ("b", 1), ("c", 1))},
                      bias_v={"a": np.array([-1.0, 1.0]), "b": np.array([-2.0]), "c": np.array([np.nan])})
    assert unclicked_at_polarity(support, 1.5) == ["b"]  # c's bias is unknown: it serves every scan
    assert unclicked_at_polarity(support, -1.5) == []
    assert unclicked_at_polarity(support, None) == []


def test_several_at_points_save_one_crop_each_centred_on_its_point(tmp_path):
    path = write_sxm(bump_scan(160), tmp_path / "scan.sxm")
    px = 160 / SIZE_NM  # scan pixels per nm
    row, col = BUMP_NM[0] * px - 0.5, BUMP_NM[1] * px - 0.5
    # the bump itself, and 1 nm left of it (repeat --at, and a ';' list)
    assert main(["support", "add", "--surface", "si001h", "--label", "b", "--scan", str(path),
                 "--at", f"{row},{col}", "--at", f"{row},{col - px};{row},{col}",
                 "--support", str(tmp_path / "s")]) == 0
    saved = sorted((tmp_path / "s" / "b").glob("*.npy"), key=lambda p: p.stem[-3:])  # in click order
    assert len(saved) == 3
    centres = [bright_centre(np.load(p)) for p in saved]
    assert abs(centres[0][1] - 16) <= 1 and abs(centres[1][1] - 26) <= 1 and abs(centres[2][1] - 16) <= 1
    # a point outside the scan: a clear message and nothing else (no numpy warning first), nothing written
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            main(["support", "add", "--surface", "si001h", "--label", "c", "--scan", str(path), "--at", "5,5;900,5",
                  "--support", str(tmp_path / "s")])
        except SystemExit as exc:
            assert "outside" in str(exc)
        else:
            raise AssertionError("a point outside the scan was accepted")
    assert not list((tmp_path / "s").glob("c/*.npy"))


def test_support_suggest_lists_defects_by_margin_smallest_first(tmp_path, capsys):
    import json

    from stmwatch.models.fewshot.classifier import SUPPORT
    from stmwatch.models.sim.simulate import simulate_scan, write_example

    scan, truth = simulate_scan("si001h", 8, pixels=(128, 128), n_defects=10, bias_v=-1.8)
    sxm = write_example(scan, truth, tmp_path / "s")
    assert main(["support", "suggest", "--surface", "si001h", "--scan", str(sxm), "--support",
                 str(SUPPORT / "si001h"), "--n", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 1 <= len(rows) <= 4
    margins = [r["margin"] for r in rows]
    assert margins == sorted(margins) and all(0 <= m <= 1 for m in margins)
    assert all(r["p"] >= r["p_second"] and r["nearest"] != r["second"] for r in rows)
    assert margins[0] < 1.0  # not saturated (the softmax probabilities of a Euclidean net are)
    assert "polarity" not in capsys.readouterr().err  # the shipped set has no bias records
    # vacancy clicked only in empty states (+1.5 V): on this filled-state scan, suggest says so
    import shutil

    support = shutil.copytree(SUPPORT / "si001h", tmp_path / "support")
    for crop in (support / "vacancy").glob("*.npy"):
        crop.with_suffix(".json").write_text(json.dumps({"bias_v": 1.5}))
    assert main(["support", "suggest", "--surface", "si001h", "--scan", str(sxm), "--support", str(support)]) == 0
    err = capsys.readouterr().err
    assert "vacancy clicked only at the other bias polarity" in err and "-1.8 V" in err
    assert "translated from those clicks" in err  # Si(001):H has polarity maps (models/fewshot/polarity.py)


def test_support_add_refuses_clicks_that_would_make_a_bad_example(tmp_path, capsys, monkeypatch):
    """Found by a review (stop 33): a click on lines never acquired saved a flat crop, a coarse
    survey scan's click was taken though process does not segment it, a label could write outside
    the support folder, and an unknown surface was a traceback."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    scan = bump_scan(96)
    z = scan.channels[0]
    missing = z.forward.copy()
    missing[48:] = np.nan  # the scan stopped half way: lines 48-95 never acquired
    aborted = Scan([Channel("Z", "m", forward=missing, backward=missing)], pixels=scan.pixels, range_m=scan.range_m)
    path = write_sxm(aborted, tmp_path / "aborted.sxm")
    coarse = write_sxm(Scan(scan.channels, pixels=scan.pixels, range_m=(40e-9, 40e-9)), tmp_path / "coarse.sxm")
    support = tmp_path / "support"

    def refused(*args) -> str:
        with pytest.raises(SystemExit) as exc:
            main(["support", "add", "--surface", "si001h", "--support", str(support), *map(str, args)])
        return str(exc.value)

    assert "no data" in refused("--label", "x", "--scan", path, "--at", "80,40")
    assert "coarser than max_nm_per_px" in refused("--label", "x", "--scan", coarse, "--at", "30,30")
    assert "a class name is" in refused("--label", "../../escaped", "--scan", path, "--at", "20,40")
    assert "a class name is" in refused("--label", "", "--scan", path, "--at", "20,40")
    capsys.readouterr()
    assert refused("--surface", "bogus", "--label", "x", "--scan", path, "--at", "20,40") == "2"  # a usage error
    assert "argument --surface: unknown surface 'bogus' (known: ge001, si001h, tio2110)" in capsys.readouterr().err
    assert not support.exists() and not (tmp_path / "escaped").exists()
    # an acquired point is fine; without --support the user folder is written, and the line says how to use it
    assert main(["support", "add", "--surface", "si001h", "--label", "x", "--scan", str(path), "--at", "20,40"]) == 0
    out = capsys.readouterr().out
    assert "use it: stmwatch process FILE --support" in out and str(tmp_path / "home") in out
