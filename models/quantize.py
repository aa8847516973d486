"""Static int8 quantization of the UNet for ONNX Runtime on the CPU (the ``onnxruntime-int8`` backend).

The fp32 ONNX export for int8 (:func:`~stmwatch.models.backends.export_onnx` with ``for_int8``:
the up-samplings as 1×1 convolutions and a pixel shuffle, :mod:`.export`) is quantized with ONNX
Runtime's own tool (``onnxruntime.quantization.quantize_static``: QDQ format, int8 weights per
output channel, uint8 activations) after its pre-processing pass (shape inference, graph
optimisation). Activation ranges come from calibration on *simulated* scans: a few scans per
surface (the training mix of artefacts, seeds from :data:`CALIBRATION_SEED`, used neither in
training nor in the held-out set) go through the real preprocessing and are cut into exactly
the tiles and flips that inference feeds the backend. Nothing is downloaded. The quantized
model is cached next to the fp32 export, keyed by model hash, tile and calibration recipe, so
the calibration (seconds to a minute) runs once per model.

Accuracy: measured on held-out scans against the fp32 model in ``models/weights/MODEL_CARD.md``.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CALIBRATION_SEED = 8_000_000  # training seeds are below 7_000_000, the held-out set starts there
CALIBRATION_SCANS = 3  # scans per surface
# part of the cache key; v2: the graph of models/export.py (v1 quantized the plain export)
CALIBRATION_RECIPE = f"minmax-s{CALIBRATION_SEED}-n{CALIBRATION_SCANS}-v2"


def calibration_batches(tile: int, surfaces: list[str] | None = None, scans: int = CALIBRATION_SCANS,
                        seed: int = CALIBRATION_SEED, flips: int = 4, overlap: int = 32) -> list[np.ndarray]:
    """``(B, C, tile, tile)`` float32 batches, as inference hands them to a backend, from
    ``scans`` simulated scans per surface (default: every known surface) prepared by the default
    preprocessing and tiled with ``flips`` mirror images."""
    from .preprocess import prepare
    from .surfaces import SURFACES
    from .sim.simulate import training_scan
    from .unet import flip_averaged_predict

    batches: list[np.ndarray] = []

    def record(batch: np.ndarray) -> np.ndarray:
        batches.append(np.array(batch, dtype=np.float32))
        return np.zeros((len(batch), tile, tile), dtype=np.float32)

    for k, surface in enumerate(surfaces or list(SURFACES)):
        for i in range(scans):
            scan, _ = training_scan(surface, seed + k * 1000 + i)
            image = prepare(scan, surface).image
            flip_averaged_predict(image, record, flips, tile, overlap, batch_size=8)
    return batches


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of batches."""

    def __init__(self, batches: list[np.ndarray]):
        self._items = iter([{"image": b} for b in batches])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # the interface has it; one pass is all MinMax needs
        pass


def quantize_unet(fp32_path: Path, out_path: Path, batches: list[np.ndarray]) -> Path:
    """Write the static int8 (QDQ) quantization of the fp32 ONNX model at ``fp32_path`` to
    ``out_path``, activation ranges from ``batches`` (MinMax). Returns ``out_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not batches:
        raise ValueError("int8 quantization needs at least one calibration batch")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_name(f".{out_path.stem}.{os.getpid()}.pre.onnx")
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.part")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # height, width dynamic
            quantize_static(str(pre), str(tmp), _Reader(batches), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)
        tmp.replace(out_path)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out_path
