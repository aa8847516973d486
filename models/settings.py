"""Settings of the models (``[models]`` in config.toml)."""
from __future__ import annotations

import dataclasses

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


@dataclasses.dataclass
class ModelSettings:
    surface: str = "si001h"  # surface the scans show: si001h | ge001 | tio2110
    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt
    segmenter_weights: str = ""  # UNet checkpoint; "" = the shipped weights
    classifier_weights: str = ""  # prototypical-network checkpoint; "" = the shipped weights
    support: str = ""  # folder of labelled crops <support>/<class>/*.npy; "" = shipped set
    threshold: float = 0.5  # defect probability above which a pixel is defect
    min_area_px: int = 6  # smaller components (in model pixels) are noise
    unknown_distance: float = 0.0  # above this embedding distance a defect is 'unknown'; 0 = shipped
    engine_cache: str = "~/.cache/stmwatch/engines"  # TensorRT engines, keyed by model hash/shape/GPU
    tile_px: int = 256  # UNet tile size (model pixels)
    tile_overlap_px: int = 32  # overlap between tiles

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        if not 0 < self.threshold < 1:
            raise ValueError("threshold must be between 0 and 1")
