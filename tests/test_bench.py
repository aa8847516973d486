"""The benchmarks' plumbing (figures and their relations, not their values: no timing is asserted)."""
from __future__ import annotations

import argparse
import json
import sys
import types

import numpy as np
import pytest

from stmwatch.daemon.targets import bench_all


def _fake_module(name: str, figures: dict | None, monkeypatch) -> None:
    module = types.ModuleType(name)

    def add_arguments(parser):
        parser.add_argument("--config")
        parser.add_argument("--repeat", type=int, default=1)
        parser.add_argument("--json", action="store_true")

    def run(args):
        if figures is None:
            raise RuntimeError("broken benchmark")
        print(json.dumps({**figures, "repeat": args.repeat, "config": args.config}) if args.json else "a table")
        return 0

    module.add_arguments, module.run = add_arguments, run
    monkeypatch.setitem(sys.modules, name, module)


def test_bench_all_collects_one_json_object_and_survives_a_failing_benchmark(monkeypatch, capsys):
    _fake_module("fake_bench_a", {"ratio": 4.5}, monkeypatch)
    _fake_module("fake_bench_b", None, monkeypatch)
    monkeypatch.setattr(bench_all, "SHORT", {"a": ("fake_bench_a", ["--repeat", "3"]), "b": ("fake_bench_b", [])})
    code = bench_all.run(argparse.Namespace(config="c.toml", only=None, json=True))
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and out["failed"] == ["b"]
    assert out["a"] == {"ratio": 4.5, "repeat": 3, "config": "c.toml"}
    assert "broken benchmark" in out["b"]["error"]
    assert set(out["seconds"]) == {"a", "b", "total"}
    assert bench_all.run(argparse.Namespace(config=None, only=["a"], json=False)) == 0
    assert "a table" in capsys.readouterr().out


def test_bench_preprocess_figures(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from stmwatch.daemon.targets.bench_preprocess import measure
    from stmwatch.daemon.config import config_from_dict
    from stmwatch.models import quantize

    calibration = [np.random.default_rng(1).normal(size=(2, 2, 256, 256)).astype(np.float32)]
    monkeypatch.setattr(quantize, "calibration_batches", lambda tile, *a, **k: calibration)
    config = config_from_dict({"models": {"engine_cache": str(tmp_path)}})
    result = measure(config, pixels=96, range_nm=12.0, repeat=2, threads=1)
    assert result["model_px"] == [120, 120]  # 12 nm at Si(001):H's 0.1 nm per model pixel
    assert result["backend"] in ("onnxruntime", "onnxruntime-int8")
    assert result["ratio"] == pytest.approx(result["ms"] / result["unet_ms"], rel=0.01)
    assert set(result["steps_ms"]) == {"fill_nan + resample", "plane", "align_rows", "repair_scars", "normalise"}
    assert result["target_ratio_le_0_3"] == (result["ms"] / result["unet_ms"] <= 0.3)


def test_bench_pipeline_publishes_every_scan(tmp_path):
    pytest.importorskip("onnxruntime")
    from stmwatch.daemon.targets.bench_pipeline import measure
    from stmwatch.daemon.config import config_from_dict

    config = config_from_dict({"models": {"engine_cache": str(tmp_path), "test_time_flips": 1}})
    result = measure(config, pixels=128, scans=2)
    assert result["latency_ms"]["n"] == 2 and result["raw_inference_ms"]["n"] == 2
    assert result["backend"] == "onnxruntime" and result["flips"] == 1
    assert result["model_px"] == [128, 128] and result["channels"] == 2 and result["defects"] > 0
    assert result["overhead_ratio"] == pytest.approx(
        result["latency_ms"]["median"] / result["raw_inference_ms"]["median"], rel=0.01)


def test_bench_classify_times_torch_alone_without_onnxruntime(monkeypatch, capsys):
    """ONNX Runtime is an optional extra: without it ``bench classify`` (and so ``bench all``)
    times torch alone and says why, instead of ending in a traceback."""
    import importlib.util

    from stmwatch.daemon.targets import bench_classify

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    args = argparse.Namespace(weights=None, batch=4, repeats=1, threads=1, json=True)
    assert bench_classify.run(args) == 0
    captured = capsys.readouterr()
    figures = json.loads(captured.out.strip().splitlines()[-1])
    assert figures["torch_crops_per_s"] > 0 and "onnxruntime_crops_per_s" not in figures
    assert "pip install 'stmwatch[onnx]'" in captured.err
