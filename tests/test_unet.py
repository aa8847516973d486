"""The UNet, its tiled inference, checkpoints, the backends, and a tiny training run."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from stmwatch.models.backends import BackendUnavailable, TorchBackend, make_backend, tensorrt_unavailable
from stmwatch.models.train_unet import Patches, cut_patches, disc_target, train, validate
from stmwatch.models.unet import (UNet, UNetConfig, flip_averaged_predict, load_checkpoint, model_hash, save_checkpoint,
                                  tiled_predict)


def small_unet(seed: int = 0, width: int = 4) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(width=width, depth=2, dropout=0.5))
    # give BatchNorm non-trivial running statistics, so that train/eval mode would differ
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 2, 32, 32) * 3 + 1)
    return model.eval()


def test_unet_shape_and_eval_mode_is_deterministic_and_per_sample():
    model = small_unet()
    x = torch.randn(3, 2, 48, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
        alone = model(x[:1])
    assert a.shape == (3, 1, 48, 64)
    assert torch.equal(a, b)  # dropout off in eval mode
    assert torch.allclose(a[:1], alone, atol=1e-5)  # BatchNorm uses running stats, not the batch's
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), a)  # the same weights behave differently in training


def box_blur_predict(batch: np.ndarray) -> np.ndarray:
    """A local 'network': 3x3 mean of channel 0 with zero padding, squashed to (0, 1)."""
    p = np.pad(batch[:, 0], ((0, 0), (1, 1), (1, 1)))
    h, w = batch.shape[2:]
    s = sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return 1 / (1 + np.exp(-s))


@pytest.mark.parametrize("shape", [(2, 300, 200), (2, 64, 640), (2, 40, 30), (2, 129, 257)])
def test_tiled_prediction_equals_whole_image(shape):
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    whole = box_blur_predict(image[None])[0]
    tiled = tiled_predict(image, box_blur_predict, tile=64, overlap=16, batch_size=3)
    assert tiled.shape == shape[1:]
    # the outer 8 px of a tile (where its zero padding shows) are never used inside the image
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize("flips", [1, 2, 4])
def test_flip_averaging_flips_each_prediction_back(flips):
    # box_blur_predict commutes with flips, so every flipped prediction, flipped back, is the
    # unflipped one: the mean equals it. A prediction left flipped would differ (the image is not
    # symmetric).
    image = np.random.default_rng(5).normal(size=(2, 70, 90)).astype(np.float32)
    plain = tiled_predict(image, box_blur_predict, tile=32, overlap=8, batch_size=4)
    averaged = flip_averaged_predict(image, box_blur_predict, flips, tile=32, overlap=8, batch_size=4)
    np.testing.assert_allclose(averaged, plain, atol=1e-6)
    assert np.abs(plain - plain[::-1]).max() > 0.1 and np.abs(plain - plain[:, ::-1]).max() > 0.1


def test_flip_averaging_is_the_mean_of_the_mirror_images():
    # A 'network' that sees only the tile's top-left quarter: its four mirror images differ, and
    # the mean is the average of the four, each flipped back (computed here by hand on the whole
    # image).
    def top_left_quarter(batch: np.ndarray) -> np.ndarray:
        out = np.zeros(batch.shape[:1] + batch.shape[2:], dtype=np.float32)
        h, w = batch.shape[2] // 2, batch.shape[3] // 2
        out[..., :h, :w] = batch[:, 0, :h, :w]
        return out

    image = np.random.default_rng(6).normal(size=(2, 16, 16)).astype(np.float32)
    one = lambda x: top_left_quarter(x[None])[0]  # noqa: E731  (the whole image is one tile)
    expected = (one(image) + one(image[:, :, ::-1])[:, ::-1]) / 2
    averaged2 = flip_averaged_predict(image, top_left_quarter, 2, tile=16, overlap=0)
    np.testing.assert_allclose(averaged2, expected, atol=1e-6)
    expected4 = (2 * expected + one(image[:, ::-1])[::-1] + one(image[:, ::-1, ::-1])[::-1, ::-1]) / 4
    averaged4 = flip_averaged_predict(image, top_left_quarter, 4, tile=16, overlap=0)
    np.testing.assert_allclose(averaged4, expected4, atol=1e-6)
    with pytest.raises(ValueError, match="flips"):
        flip_averaged_predict(image, top_left_quarter, 3, tile=16, overlap=0)


def test_tiled_unet_close_to_whole_image_inference():
    model = small_unet()
    image = np.random.default_rng(2).normal(size=(2, 96, 160)).astype(np.float32)
    backend = TorchBackend(model)
    whole = backend(image[None])[0]
    tiled = tiled_predict(image, backend, tile=64, overlap=32, batch_size=4)
    assert np.abs(tiled - whole).max() < 0.05
    assert np.median(np.abs(tiled - whole)) < 1e-3


def test_checkpoint_round_trip(tmp_path):
    model = small_unet(3)
    path = save_checkpoint(model, tmp_path / "w.pt", meta={"name": "test"})
    loaded, state = load_checkpoint(path)
    assert state["meta"]["name"] == "test" and not loaded.training
    assert model_hash(loaded) == model_hash(model)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert model_hash(small_unet(4)) != model_hash(model)


def test_onnxruntime_agrees_with_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    model = small_unet(5, width=8)
    batch = np.random.default_rng(3).normal(size=(3, 2, 64, 64)).astype(np.float32)
    eager = make_backend("torch", model, 64)(batch)
    ort = make_backend("onnxruntime", model, 64, cache_dir=tmp_path, threads=1)
    assert ort.name == "onnxruntime" and ort.path.exists() and ort.path.parent == tmp_path
    assert np.abs(ort(batch) - eager).max() < 1e-3
    again = make_backend("onnxruntime", model, 64, cache_dir=tmp_path, threads=1)  # from the cache
    assert again.path == ort.path and np.abs(again(batch[:1]) - eager[:1]).max() < 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without a GPU")
def test_tensorrt_unavailable_is_clear_and_auto_falls_back(tmp_path, caplog):
    model = small_unet()
    assert "stmwatch[gpu]" in tensorrt_unavailable()
    with pytest.raises(BackendUnavailable, match=r"stmwatch\[gpu\]"):
        make_backend("tensorrt", model, 64, cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="stmwatch.models.backends"):
        backend = make_backend("auto", model, 64, cache_dir=tmp_path)
    expected = "onnxruntime" if _has("onnxruntime") else "torch"
    assert backend.name == expected
    assert any(f"backend auto: {expected}" in r.message and "CUDA" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match="multiple"):
        make_backend("torch", model, 30)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_disc_target_and_patches():
    target = disc_target((20, 20), np.array([5.0]), np.array([10.0]), 2.0)
    assert target[5, 10] == 1 and target[5, 12] == 1 and target[5, 13] == 0 and target[7, 10] == 1
    assert target.sum() == 13  # lattice points within radius 2 of a point
    image = np.zeros((2, 50, 40), np.float32)
    p = cut_patches(image, np.array([[10.0, 10.0], [45.0, 35.0]]), 32, 5, 2.0, np.random.default_rng(0))
    assert p.images.shape == (5, 2, 32, 32) and p.targets.shape == (5, 32, 32)
    for t, centres in zip(p.targets, p.centres):  # each listed centre sits on its disc in the patch
        for r, c in centres:
            assert t[int(round(r)), int(round(c))] == 1


def blob_patches(n: int, seed: int, size: int = 48) -> Patches:
    """Gaussian bumps (sigma 2 px, height 3) on white noise, both channels alike."""
    rng = np.random.default_rng(seed)
    images, targets, centres = [], [], []
    rr, cc = np.mgrid[0:size, 0:size]
    for _ in range(n):
        pts = rng.uniform(6, size - 6, (int(rng.integers(1, 4)), 2))
        img = rng.normal(0, 0.5, (size, size))
        for r, c in pts:
            img += 3 * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / 8)
        images.append(np.stack([img, img]).astype(np.float32))
        targets.append(disc_target((size, size), pts[:, 0], pts[:, 1], 3.0))
        centres.append(pts)
    return Patches(np.stack(images), np.stack(targets), centres)


def test_tiny_training_learns_blobs_and_resumes(tmp_path):
    torch.manual_seed(0)
    data, val = blob_patches(64, 0), blob_patches(16, 1)
    model = UNet(UNetConfig(width=6, depth=2, dropout=0.0))
    before = validate(model, val, torch.device("cpu"), radius_px=3.0).f1
    history = train(model, data, val, tmp_path, epochs=2, steps=30, batch=8, lr=1e-2, seed=0, noise=0.0, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["f1"] > 0.8 > before
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    # resume: epoch 3 continues from the checkpoint rather than starting over
    again = UNet(UNetConfig(width=6, depth=2, dropout=0.0))
    history = train(again, data, val, tmp_path, epochs=3, steps=5, batch=8, lr=1e-2, seed=0, noise=0.0,
                    resume=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_augmentation_keeps_the_target_on_the_forward_channel():
    from stmwatch.models.train_unet import augment

    images = np.zeros((64, 2, 16, 16), np.float32)
    images[:, 0, 3, 5] = 1.0  # forward frame: the defect
    images[:, 1, 3, 7] = 1.0  # backward frame: the same defect, shifted along the line
    targets = np.zeros((64, 16, 16), np.float32)
    targets[:, 3, 5] = 1.0
    out, tgt = augment(images, targets, np.random.default_rng(0), noise=0.0)
    assert len({(int(np.argmax(t)) // 16, int(np.argmax(t)) % 16) for t in tgt}) == 4  # all four flips occur
    for x, t in zip(out, tgt):
        assert np.array_equal(x[0] == 1.0, t == 1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the TensorRT row on a machine without a GPU")
def test_bench_rows(tmp_path, monkeypatch):
    from stmwatch.models import quantize
    from stmwatch.models.bench_segment import bench

    calibration = [np.random.default_rng(5).normal(size=(4, 2, 64, 64)).astype(np.float32)]
    monkeypatch.setattr(quantize, "calibration_batches", lambda tile, *a, **k: calibration)
    image = np.random.default_rng(4).normal(size=(2, 100, 100)).astype(np.float32)
    rows = bench(small_unet(), image, tile=64, overlap=16, batch=4, repeat=2, threads=1, cache_dir=str(tmp_path))
    by_name = {r["backend"]: r for r in rows}
    assert list(by_name) == ["torch", "onnxruntime", "onnxruntime-int8", "tensorrt"]
    assert by_name["torch"]["ratio"] == 1.0 and by_name["torch"]["ms"] > 0
    assert by_name["tensorrt"]["ms"] is None and "stmwatch[gpu]" in by_name["tensorrt"]["note"]
    if _has("onnxruntime"):
        assert by_name["onnxruntime"]["max_abs_diff"] < 1e-3
        ratio = by_name["torch"]["ms"] / by_name["onnxruntime"]["ms"]
        assert by_name["onnxruntime"]["ratio"] == pytest.approx(ratio, rel=0.01)


def test_int8_quantization_stays_close_to_fp32_and_is_cached(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from stmwatch.models import quantize

    model = small_unet(6, width=8)
    rng = np.random.default_rng(7)
    calibration = [rng.normal(size=(4, 2, 64, 64)).astype(np.float32) for _ in range(3)]
    calls = []

    def fake_batches(tile, *args, **kwargs):  # the real one simulates scans: seconds, not needed here
        calls.append(tile)
        return calibration

    monkeypatch.setattr(quantize, "calibration_batches", fake_batches)
    batch = rng.normal(size=(3, 2, 64, 64)).astype(np.float32)
    fp32 = make_backend("onnxruntime", model, 64, cache_dir=tmp_path, threads=1)
    int8 = make_backend("onnxruntime-int8", model, 64, cache_dir=tmp_path, threads=1)
    assert int8.name == "onnxruntime-int8" and int8.path.exists() and int8.path != fp32.path
    assert calls == [64]
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # really quantized
    assert "ConvTranspose" not in ops  # the up-samplings quantized too (models/export.py)
    reference, quantized = fp32(batch), int8(batch)
    assert np.abs(quantized - reference).mean() < 0.02
    assert ((quantized > 0.5) == (reference > 0.5)).mean() > 0.97
    again = make_backend("onnxruntime-int8", model, 64, cache_dir=tmp_path, threads=1)
    assert again.path == int8.path and calls == [64]  # from the cache: no second calibration
    assert np.array_equal(again(batch), quantized)


def test_calibration_batches_are_the_tiles_inference_sees():
    from stmwatch.models.quantize import calibration_batches

    batches = calibration_batches(64, ["si001h"], scans=1, flips=2, overlap=16)
    assert all(b.dtype == np.float32 and b.shape[1:] == (2, 64, 64) for b in batches)
    values = np.concatenate([b.ravel() for b in batches])
    assert np.abs(values).max() <= 6.0 and 0.5 < values.std() < 2.0  # normalised model input


def test_tensorrt_engine_cache_with_a_fake_engine(tmp_path):
    """TensorRT cannot be installed here: a traced TorchScript module stands in for the engine, to
    check the cache (written once, loaded after, keyed by model, shape and GPU)."""
    from stmwatch.models.backends import cached_engine, engine_path
    from stmwatch.models.unet import Probability

    model = small_unet(8)
    compiled = []

    def fake_compile():
        compiled.append(1)
        return torch.jit.trace(Probability(model).eval(), torch.zeros(2, 2, 32, 32))

    path = engine_path(tmp_path, model, 2, 32, "NVIDIA H100 80GB HBM3")
    assert path.parent == tmp_path and "NVIDIA_H100_80GB_HBM3" in path.name and path.name.endswith("-fp16.ts")
    first = cached_engine(path, fake_compile, "cpu")
    second = cached_engine(path, fake_compile, "cpu")
    assert compiled == [1] and path.exists() and not list(tmp_path.glob(".*.part"))
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(first(x), second(x)) and torch.allclose(second(x), Probability(model)(x))
    assert engine_path(tmp_path, model, 2, 32, "NVIDIA H200") != path
    assert engine_path(tmp_path, model, 4, 32, "NVIDIA H100 80GB HBM3") != path
    assert engine_path(tmp_path, small_unet(9), 2, 32, "NVIDIA H100 80GB HBM3") != path


@pytest.mark.parametrize("depth", [2, 3])
def test_export_graph_computes_the_unet(depth, tmp_path):
    """The graph the int8 backend quantizes (up-samplings as 1x1 convolutions + pixel shuffle)
    is the UNet's function: in torch, and exported to ONNX and run at other sizes and batches
    than it was traced at (the shuffle's sizes come from the input's shape)."""
    from stmwatch.models.backends import export_onnx
    from stmwatch.models.export import ExportProbability
    from stmwatch.models.unet import Probability

    torch.manual_seed(depth)
    model = UNet(UNetConfig(width=4, depth=depth, dropout=0.5))
    with torch.no_grad():  # biases and BatchNorm statistics away from their defaults
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    m = model.multiple
    x = torch.randn(3, 2, 3 * m, 5 * m)
    with torch.no_grad():
        reference = Probability(model)(x)
        assert torch.allclose(ExportProbability(model).eval()(x), reference, atol=1e-6)
    if not _has("onnxruntime"):
        return
    import onnxruntime as ort

    path = export_onnx(model, tmp_path / "int8-source.onnx", 2, 4 * m, for_int8=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x.numpy()})[0]
    assert out.shape == tuple(reference.shape) and np.allclose(out, reference.numpy(), atol=1e-5)
