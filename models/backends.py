"""Inference backends for the UNet: eager torch, ONNX Runtime, TensorRT.

Every backend is a callable ``(B, C, tile, tile)`` float32 numpy → ``(B, tile, tile)`` float32
probabilities (the :class:`~stmwatch.models.unet.Probability` of the UNet), so
:func:`~stmwatch.models.unet.tiled_predict` runs any of them. Choose with :func:`make_backend`
(``[models] backend`` = auto | torch | onnxruntime | onnxruntime-int8 | tensorrt).

- ``torch``: the model in eval mode (BatchNorm uses running statistics, Dropout is off) under
  ``torch.inference_mode``.
- ``onnxruntime``: the model exported once to ONNX (batch, height and width dynamic), cached on
  disk by model hash, run with all graph optimisations and one thread per core.
- ``onnxruntime-int8``: the model exported with its up-samplings as 1×1 convolutions and a pixel
  shuffle (:mod:`.export`) and statically quantized to int8 (:mod:`.quantize`), calibrated once
  on simulated scans and cached; chosen by name (and by the live path under ``auto``).
- ``tensorrt``: torch-tensorrt (the ``[gpu]`` extra), imported only when asked for, fp16, the
  compiled engine cached on disk keyed by model hash, input shape and GPU name.

``auto`` picks TensorRT on a CUDA machine where it imports, else eager torch on the CUDA GPU,
else ONNX Runtime where installed, else torch on the CPU, and logs which and why. (On an H100
machine without TensorRT, eager torch on the GPU ran a 512² scan 4.5× faster than ONNX Runtime on
its 16 CPU cores: ``scripts/bench_gpu.py``, figures in ``models/weights/MODEL_CARD.md``.)
"""
from __future__ import annotations

import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from .unet import Probability, UNet, model_hash

log = logging.getLogger(__name__)

NAMES = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
GPU_EXTRA_HINT = "install the GPU extra: pip install 'stmwatch[gpu]' (torch-tensorrt, needs CUDA)"


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here; the message says why and what to install."""


class Backend(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(B, C, tile, tile)`` float32 → ``(B, tile, tile)`` float32 probabilities."""
        ...


def default_cache_dir() -> Path:
    """Where exported ONNX files and TensorRT engines are cached (``[models] engine_cache``)."""
    return Path(os.environ.get("STMWATCH_ENGINE_CACHE", "~/.cache/stmwatch/engines")).expanduser()


class TorchBackend:
    """Eager PyTorch, eval mode (the reference every other backend is checked against)."""

    name = "torch"

    def __init__(self, model: UNet, device: str = "cpu"):
        self.device = torch.device(device)
        self.module = Probability(model).to(self.device).eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.module(x).float().cpu().numpy()


def export_onnx(model: UNet, path: Path, channels: int, tile: int, *, for_int8: bool = False) -> Path:
    """Export the UNet + sigmoid to ONNX with input ``(batch, channels, height, width)``, all but
    the channels dynamic (``height`` and ``width`` multiples of ``model.multiple``: whole-frame
    tiles and the live path's bands run on the same file); traced at ``tile``². BatchNorm is
    folded into the convolutions (eval mode, constant folding). ``for_int8``: the graph that
    :mod:`.quantize` quantizes (:class:`~stmwatch.models.export.ExportProbability`: the same
    function, up-sampling as 1×1 convolutions and a pixel shuffle; slower than the plain graph in
    float32, 1.4× faster once quantized)."""
    from .export import ExportProbability

    module = (ExportProbability(model) if for_int8 else Probability(model)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, torch.zeros(1, channels, tile, tile), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["probability"], do_constant_folding=True,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "probability": {0: "batch", 1: "height", 2: "width"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU (or CUDA provider where that build is installed)."""

    name = "onnxruntime"

    def __init__(self, model: UNet, tile: int, cache_dir: Path | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc}); pip install 'stmwatch[onnx]'") from None
        channels = model.config.in_channels
        cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
        self.path = cache_dir / f"unet-{model_hash(model)[:16]}-{channels}xHxW.onnx"
        if not self.path.exists():
            log.info("exporting the UNet to %s", self.path)
            export_onnx(model, self.path, channels, tile)
        self.path = self._model_path(model, self.path, tile)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        # no busy-waiting between runs: idle threads would burn the cores the acquisition
        # software and the next scan's preprocessing need
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.tile = tile

    def _model_path(self, model: UNet, fp32_path: Path, tile: int) -> Path:
        """The ONNX file the session runs, given the fp32 export."""
        return fp32_path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """ONNX Runtime on the CPU with the UNet statically quantized to int8 (:mod:`.quantize`):
    calibrated once on simulated scans, cached beside the fp32 export."""

    name = "onnxruntime-int8"

    def _model_path(self, model: UNet, fp32_path: Path, tile: int) -> Path:
        from . import quantize

        path = fp32_path.with_name(f"{fp32_path.stem}-int8-t{tile}-{quantize.CALIBRATION_RECIPE}.onnx")
        if not path.exists():
            if importlib.util.find_spec("onnx") is None:
                raise BackendUnavailable("int8 quantization needs the onnx package; pip install 'stmwatch[onnx]'")
            log.info("quantizing the UNet to int8 (calibration on simulated scans, once); cached at %s", path)
            source = path.with_name(f".{path.stem}.{os.getpid()}.fp32.onnx")  # the graph to quantize
            try:
                export_onnx(model, source, model.config.in_channels, tile, for_int8=True)
                quantize.quantize_unet(source, path, quantize.calibration_batches(tile))
            finally:
                source.unlink(missing_ok=True)
        return path


def engine_path(cache_dir: Path, model: UNet, batch_size: int, tile: int, gpu: str) -> Path:
    """Where the TensorRT engine for ``model`` at this batch and tile shape on the GPU called
    ``gpu`` is cached: a new model, shape or GPU gets a new file."""
    channels = model.config.in_channels
    gpu = gpu.replace(" ", "_")
    return Path(cache_dir) / f"unet-{model_hash(model)[:16]}-{batch_size}x{channels}x{tile}x{tile}-{gpu}-fp16.ts"


def cached_engine(path: Path, compile_engine: Callable[[], torch.jit.ScriptModule], device: str) -> torch.jit.ScriptModule:
    """The TorchScript engine saved at ``path``, else ``compile_engine()`` saved there (written to
    a temporary name first, so that a crash never leaves half a file in the cache)."""
    if path.exists():
        log.info("loading the cached TensorRT engine %s", path)
        return torch.jit.load(str(path), map_location=device)
    module = compile_engine()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    torch.jit.save(module, str(tmp))
    tmp.replace(path)
    return module


class TensorRTBackend:
    """torch-tensorrt, fp16, fixed batch and tile shape; the engine is cached on disk
    (:func:`engine_path`, :func:`cached_engine`)."""

    name = "tensorrt"

    def __init__(self, model: UNet, tile: int, batch_size: int, cache_dir: Path | None = None):
        reason = tensorrt_unavailable()
        if reason:
            raise BackendUnavailable(reason)
        import torch_tensorrt  # (imported here only: heavy, GPU machines only)

        channels = model.config.in_channels
        gpu = torch.cuda.get_device_name(0)
        self.path = engine_path(Path(cache_dir or default_cache_dir()).expanduser(), model, batch_size, tile, gpu)
        self.batch_size = batch_size

        def compile_engine():
            log.info("compiling a TensorRT engine (fp16) for %s; cached at %s", gpu, self.path)
            return torch_tensorrt.compile(
                Probability(model).eval().cuda(), ir="ts",
                inputs=[torch_tensorrt.Input((batch_size, channels, tile, tile), dtype=torch.float32)],
                enabled_precisions={torch.float16, torch.float32})

        self.module = cached_engine(self.path, compile_engine, "cuda")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        x = torch.zeros((self.batch_size, *batch.shape[1:]), device="cuda")  # the engine's fixed batch
        x[:n] = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
        with torch.inference_mode():
            return self.module(x)[:n].float().cpu().numpy()


def tensorrt_unavailable() -> str:
    """Why TensorRT cannot be used here ('' when it can), without importing it."""
    if not torch.cuda.is_available():
        return f"TensorRT needs a CUDA GPU and torch sees none; {GPU_EXTRA_HINT}"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return f"torch_tensorrt is not installed; {GPU_EXTRA_HINT}"
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as exc:  # a broken install (CUDA/TensorRT version mismatch) must not crash auto
        return f"torch_tensorrt does not import ({type(exc).__name__}: {exc}); {GPU_EXTRA_HINT}"
    return ""


def make_backend(name: str, model: UNet, tile: int, batch_size: int = 8, cache_dir: str | Path | None = None,
                 threads: int | None = None) -> Backend:
    """The backend called ``name`` (auto | torch | onnxruntime | tensorrt) for ``model``.

    An explicit name that cannot run raises :class:`BackendUnavailable`; ``auto`` falls back
    (TensorRT → torch on a CUDA GPU → ONNX Runtime → torch on the CPU) and logs its choice and
    the reason.
    """
    if tile % model.multiple:
        raise ValueError(f"tile {tile} is not a multiple of {model.multiple} (the UNet's down-sampling)")
    model.eval()
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if name == "torch":
        return TorchBackend(model, "cuda" if torch.cuda.is_available() else "cpu")
    if name == "onnxruntime":
        return OnnxRuntimeBackend(model, tile, cache, threads)
    if name == "onnxruntime-int8":
        return OnnxRuntimeInt8Backend(model, tile, cache, threads)
    if name == "tensorrt":
        return TensorRTBackend(model, tile, batch_size, cache)
    if name != "auto":
        raise ValueError(f"backend must be auto or one of {NAMES}, not {name!r}")
    reason = tensorrt_unavailable()
    if not reason:
        try:
            backend = TensorRTBackend(model, tile, batch_size, cache)
            log.info("backend auto: tensorrt (CUDA GPU %s, torch_tensorrt imports)", torch.cuda.get_device_name(0))
            return backend
        except Exception as exc:
            reason = f"TensorRT failed to build an engine ({type(exc).__name__}: {exc})"
    if torch.cuda.is_available():
        log.info("backend auto: torch on CUDA GPU %s (tensorrt not used: %s)", torch.cuda.get_device_name(0), reason)
        return TorchBackend(model, "cuda")
    try:
        backend = OnnxRuntimeBackend(model, tile, cache, threads)
        log.info("backend auto: onnxruntime (tensorrt not used: %s)", reason)
        return backend
    except BackendUnavailable as exc:
        log.info("backend auto: torch (tensorrt not used: %s; onnxruntime not used: %s)", reason, exc)
    return TorchBackend(model, "cpu")
