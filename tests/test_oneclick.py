"""``stmwatch eval oneclick``: a hand-made case scored by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import write_sxm
from stmwatch.models.analyse import Analysis
from stmwatch.models.defects import Defect
from stmwatch.models.oneclick import evaluate_oneclick

CLASSES = ("dangling_bond", "as_incorporated", "vacancy", "ash3_fragment")
PX = 100  # 10 nm at 0.1 nm per pixel


def write_case(folder, name, truth, bias_v=None):
    """A flat noisy 10 nm scan (sample bias ``bias_v``) with bumps at the truth pixels and its truth file."""
    rng = np.random.default_rng(len(name))
    rows, cols = np.mgrid[0:PX, 0:PX]
    z = rng.normal(0, 0.003, (PX, PX))
    for _, r, c in truth:
        z += 0.1 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 4.0 ** 2))
    scan = Scan([Channel("Z", "m", (z * 1e-9).astype(np.float32), (z * 1e-9).astype(np.float32))], pixels=(PX, PX),
                range_m=(PX * 1e-10, PX * 1e-10), bias_v=bias_v)
    path = write_sxm(scan, folder / f"{name}.sxm")
    defects = []
    for cls, r, c in truth:
        x, y = scan.pixel_to_scanner(r, c)
        defects.append({"cls": cls, "row": r, "col": c, "x_m": float(x), "y_m": float(y), "radius_nm": 0.8})
    (folder / f"{name}.truth.json").write_text(json.dumps({"surface": "si001h", "defects": defects}))
    return scan


class Scripted:
    """An analyser that answers a fixed list of (row, col, label) per scan name."""

    def __init__(self, script):
        self.script = script
        self.model_versions = {"segmenter": "scripted"}

    def analyse(self, scan):
        out = []
        for r, c, label in self.script[scan.source.stem]:
            x, y = scan.pixel_to_scanner(r, c)
            out.append(Defect(r, c, float(x), float(y), 10.0, 0.9, label=label))
        return Analysis(scan, out, {}, {}, self.model_versions)


def test_oneclick_scores_a_hand_made_case(tmp_path):
    # scan a: one clear example of each class (the clicks); b and c are scored
    write_case(tmp_path, "a", [(CLASSES[0], 30, 30), (CLASSES[1], 30, 70), (CLASSES[2], 70, 30), (CLASSES[3], 70, 70)])
    write_case(tmp_path, "b", [(CLASSES[0], 20, 20), (CLASSES[1], 20, 80), (CLASSES[2], 80, 20), (CLASSES[3], 80, 80)])
    write_case(tmp_path, "c", [(CLASSES[2], 50, 30), (CLASSES[3], 50, 70)])
    script = {
        # b: three found 2 px (0.2 nm) off, labels right, right, wrong; the fourth missed; one false alarm
        "b": [(22, 20, CLASSES[0]), (20, 82, CLASSES[1]), (78, 20, CLASSES[0]), (50, 50, CLASSES[0])],
        # c: both found; one 6 px (0.6 nm) off: beyond 0.5 nm, so a miss and a false alarm
        "c": [(50, 30, CLASSES[2]), (56, 70, CLASSES[3])],
    }
    seen = {}

    def make(folder):
        seen.update({p.name: len(list(p.glob("*.npy"))) for p in folder.iterdir()})
        crop = np.load(next((folder / CLASSES[0]).glob("*.npy")))
        seen["crop"] = crop
        return Scripted(script)

    r = evaluate_oneclick(tmp_path, "si001h", make, shots=1)
    assert seen.pop("crop").shape == (2, 32, 32)
    assert seen == {c: 1 for c in CLASSES}  # one click per class, all from scan a
    assert (r["support_scans"], r["eval_scans"]) == (1, 2)
    # by hand: true 6, found 6, matched 4 (b: 3, c: 1) -> P = R = F1 = 4/6; labels right 3 of 4
    assert (r["true"], r["found"], r["matched"]) == (6, 6, 4)
    assert r["f1"] == pytest.approx(4 / 6, abs=1e-4) and r["precision"] == pytest.approx(4 / 6, abs=1e-4)
    assert r["label_accuracy"] == pytest.approx(0.75)
    # resampling the two scored scans: b b -> 4/6, b c -> 3/4, c c -> 1/1
    assert r["label_accuracy_ci95"] == pytest.approx([0.6667, 1.0], abs=1e-4)
    assert r["per_class_accuracy"] == {CLASSES[0]: 1.0, CLASSES[1]: 1.0, CLASSES[2]: 0.5}  # no ash3 matched
    assert r["confusion"][CLASSES[2]] == {CLASSES[0]: 1, CLASSES[2]: 1}


def test_too_few_examples_is_a_clear_error(tmp_path):
    write_case(tmp_path, "a", [(CLASSES[0], 30, 30)])
    write_case(tmp_path, "b", [(CLASSES[0], 30, 30)])
    with pytest.raises(ValueError, match="missing"):
        evaluate_oneclick(tmp_path, "si001h", lambda folder: None, shots=1)


def test_per_polarity_clicks_each_class_at_each_bias_sign(tmp_path):
    """Scan a is at +1.5 V, b at -1.5 V: one click per class is taken from a alone; per polarity,
    from both, and each click's sidecar records its scan's bias."""
    four = [(CLASSES[0], 30, 30), (CLASSES[1], 30, 70), (CLASSES[2], 70, 30), (CLASSES[3], 70, 70)]
    write_case(tmp_path, "a", four, bias_v=1.5)
    write_case(tmp_path, "b", four, bias_v=-1.5)
    for name in "cdef":
        write_case(tmp_path, name, four[:1], bias_v=1.5)
    script = {name: [(30, 30, CLASSES[0])] for name in "bcdef"}
    folders = []
    one = evaluate_oneclick(tmp_path, "si001h", lambda f: Scripted(script), support_dir=tmp_path / "one")
    both = evaluate_oneclick(tmp_path, "si001h", lambda f: folders.append(f) or Scripted(script),
                             support_dir=tmp_path / "both", per_polarity=True)
    assert (one["support_scans"], one["clicks"], one["eval_scans"]) == (1, 4, 5)
    assert (both["support_scans"], both["clicks"], both["eval_scans"], both["per_polarity"]) == (2, 8, 4, True)
    from stmwatch.models.fewshot.crops import load_surface

    support = load_surface(folders[0])
    assert support.counts() == {c: 2 for c in sorted(CLASSES)}
    for c in CLASSES:
        assert sorted(support.polarity(c).tolist()) == [-1, 1] and sorted(support.bias_v[c].tolist()) == [-1.5, 1.5]


def test_repeats_draw_clicks_in_the_first_half_and_score_the_second(tmp_path):
    four = [(CLASSES[0], 30, 30), (CLASSES[1], 30, 70), (CLASSES[2], 70, 30), (CLASSES[3], 70, 70)]
    for name in "abcd":
        write_case(tmp_path, name, four)
    script = {"c": [(30, 30, CLASSES[0]), (30, 70, CLASSES[0])], "d": [(70, 30, CLASSES[2])]}
    r = evaluate_oneclick(tmp_path, "si001h", lambda f: Scripted(script), repeats=8, seed=3,
                          support_dir=tmp_path / "kept")
    assert (r["support_scans"], r["eval_scans"], r["clicks"], r["repeats"]) == (2, 2, 4, 8)
    # by hand: 3 matched, 2 right (the scripted labels do not depend on the clicks)
    assert r["label_accuracy_repeats"] == [pytest.approx(2 / 3, abs=1e-4)] * 8
    assert r["label_accuracy_mean"] == pytest.approx(2 / 3, abs=1e-4)
    # c's two defects are dangling_bond and as_incorporated, both called dangling_bond; d's vacancy is right
    assert r["confusion_draws"] == {CLASSES[0]: {CLASSES[0]: 8}, CLASSES[1]: {CLASSES[0]: 8}, CLASSES[2]: {CLASSES[2]: 8}}
    assert r["per_class_accuracy_draws"] == {CLASSES[0]: 1.0, CLASSES[1]: 0.0, CLASSES[2]: 1.0}
    sources = set()
    for draw in sorted((tmp_path / "kept").iterdir()):
        crops = sorted((draw / "si001h").glob("*/*.npy"))
        assert len(crops) == 4  # one per class in each draw
        sources |= {json.loads(c.with_suffix(".json").read_text())["scan"].split("/")[-1] for c in crops}
    assert sources == {"a.sxm", "b.sxm"}  # drawn from both click scans, never from the scored ones


def test_keep_support_refuses_a_folder_that_already_holds_clicks(tmp_path, capsys):
    """Found by a review: a second run into the same --keep-support added its clicks to the first's
    (a "1-shot" run with 8 clicks); now it is refused before any work, naming the folder. An empty
    or absent folder is fine."""
    from stmwatch.daemon.cli import main

    four = [(CLASSES[0], 30, 30), (CLASSES[1], 30, 70), (CLASSES[2], 70, 30), (CLASSES[3], 70, 70)]
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in "ab":
        write_case(scans, name, four)
    script = {"b": [(30, 30, CLASSES[0])]}
    kept = tmp_path / "kept"
    (kept / "si001h").mkdir(parents=True)  # empty: fine
    assert evaluate_oneclick(scans, "si001h", lambda f: Scripted(script), support_dir=kept)["clicks"] == 4
    with pytest.raises(ValueError, match="already holds"):
        evaluate_oneclick(scans, "si001h", lambda f: pytest.fail("work began"), support_dir=kept)
    assert len(list((kept / "si001h").glob("*/*.npy"))) == 4  # nothing added
    # each draw's folder too (--repeats)
    drawn = tmp_path / "drawn"
    evaluate_oneclick(scans, "si001h", lambda f: Scripted(script), support_dir=drawn, repeats=2)
    with pytest.raises(ValueError, match="draw00"):
        evaluate_oneclick(scans, "si001h", lambda f: pytest.fail("work began"), support_dir=drawn, repeats=2)
    # the command: one line, exit 2, before any model is loaded
    assert main(["eval", "oneclick", "--scans", str(scans), "--surface", "si001h", "--keep-support", str(kept)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stmwatch eval oneclick: ") and str(kept / "si001h") in err[0]


def test_the_command_checks_its_bundle_and_counts_before_any_click(tmp_path, capsys, monkeypatch):
    """Found by a review: a bad --models bundle was named only after the clicks were cut, and
    --shots 0 gave a message about the support set."""
    from stmwatch.daemon.cli import main
    from stmwatch.models import oneclick

    monkeypatch.setattr(oneclick, "evaluate_oneclick", lambda *a, **k: pytest.fail("work began"))
    scans = tmp_path / "scans"
    scans.mkdir()
    write_case(scans, "a", [(CLASSES[0], 30, 30)])
    (tmp_path / "notabundle").mkdir()
    base = ["eval", "oneclick", "--scans", str(scans), "--surface", "si001h"]
    assert main([*base, "--models", str(tmp_path / "notabundle")]) == 1
    assert "model bundle" in capsys.readouterr().err
    assert main([*base, "--shots", "0"]) == 2
    assert "--shots and --repeats must be 1 or more" in capsys.readouterr().err


def test_scans_that_do_not_read_or_lack_their_truth_are_named_before_any_work(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in "ab":
        write_case(scans, name, [(CLASSES[0], 30, 30)])
    (scans / "c.sxm").write_bytes(b"")
    (scans / "c.truth.json").write_text("{}")
    (scans / "d.sxm").write_bytes((scans / "a.sxm").read_bytes())  # no truth beside it
    with pytest.raises(ValueError, match=r"2 of 4 scans cannot be scored") as err:
        evaluate_oneclick(scans, "si001h", lambda f: pytest.fail("work began"))
    assert "c.sxm: file is empty" in str(err.value) and "d.sxm: no d.truth.json" in str(err.value)


def test_the_memo_of_repeated_draws_gives_each_scans_own_prepared_image():
    """``_SegmentOnce`` (the draws of ``--repeats`` share one segmentation): the analyser checks the
    scan's rows on ``last_prepared`` (``Analyser.check_surface``) and reports ``last_warnings``, so a
    scan given again must bring back its own prepared image and warnings, not those of the scan
    segmented last."""
    import types

    from stmwatch.models.oneclick import _SegmentOnce

    class Segmenter:
        calls = 0

        def segment(self, scan):
            Segmenter.calls += 1
            self.last_prepared, self.last_warnings = f"prepared {scan.source}", [f"warned {scan.source}"]
            return [f"defect of {scan.source}"]

    memo = _SegmentOnce(Segmenter())
    a, b = types.SimpleNamespace(source="a.sxm"), types.SimpleNamespace(source="b.sxm")
    assert memo.segment(a) == ["defect of a.sxm"] and memo.last_prepared == "prepared a.sxm"
    assert memo.segment(b) == ["defect of b.sxm"] and memo.last_prepared == "prepared b.sxm"
    assert memo.segment(a) == ["defect of a.sxm"]
    assert memo.last_prepared == "prepared a.sxm" and memo.last_warnings == ["warned a.sxm"]
    assert Segmenter.calls == 2
