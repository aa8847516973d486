"""Settings of the models (``[models]`` in config.toml)."""
from __future__ import annotations

import dataclasses

BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
ANALYSERS = ("shipped", "standin")  # the UNet + few-shot classifier | the classical blob detector
TEST_TIME_FLIPS = (1, 2, 4)  # the mirror-image counts unet.flip_averaged_predict averages over


@dataclasses.dataclass
class ModelSettings:
    surface: str = "si001h"  # surface the scans show: si001h | ge001 | tio2110
    backend: str = "auto"  # auto | torch | onnxruntime | onnxruntime-int8 | tensorrt
    segmenter_weights: str = ""  # UNet checkpoint; "" = the shipped weights
    classifier_weights: str = ""  # prototypical-network checkpoint; "" = the shipped weights
    support: str = ""  # folder of labelled crops <support>/<class>/*.npy; "" = shipped set
    bundle: str = ""  # a model bundle folder (stmwatch adapt): its UNet, classifier and support set; "" = none
    threshold: float = 0.4  # defect probability above which a pixel is defect (0.4: best F1 with 4 flips)
    # per-surface thresholds where validation chose another (Si(001):H: its depressions are faint)
    surface_thresholds: dict[str, float] = dataclasses.field(default_factory=lambda: {"si001h": 0.25})
    min_area_px: int = 12  # smaller components (in model pixels) are noise (12: best F1 on validation scans)
    unknown_distance: float = 0.0  # above this embedding distance a defect is 'unknown'; 0 = shipped
    polarity_maps: bool = True  # translate clicks to the other bias polarity where the classifier has maps
    contrast_cue: bool = True  # each class also learns its defects' contrast at the scan's polarity (fewshot/contrast.py)
    engine_cache: str = "~/.cache/stmwatch/engines"  # TensorRT engines and ONNX exports, keyed by model hash/shape(/GPU)
    tile_px: int = 256  # UNet tile size (model pixels); a multiple of 8
    tile_overlap_px: int = 32  # overlap between tiles (model pixels)
    batch_tiles: int = 8  # tiles per UNet forward pass (memory grows with it)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = one per CPU core
    max_nm_per_px: float = 0.25  # coarser scans (either axis) are not segmented: ~1 nm defects are not resolved
    remove_double_tip_ghosts: bool = True  # drop a double tip's copies, or move them (models/double_tip.py)
    test_time_flips: int = 4  # mean probability over 1, 2 or 4 line-preserving flips (cost x flips)

    def threshold_for(self, surface: str) -> float:
        """The probability threshold for ``surface`` (a key such as ``si001h``)."""
        return float(self.surface_thresholds.get(surface, self.threshold))

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        if not all(0 < t < 1 for t in (self.threshold, *self.surface_thresholds.values())):
            raise ValueError("threshold and surface_thresholds must be between 0 and 1")
        if self.tile_px <= 0 or self.tile_px % 8:
            raise ValueError(f"tile_px must be a positive multiple of 8, not {self.tile_px}")
        if not 0 <= self.tile_overlap_px < self.tile_px:
            raise ValueError("tile_overlap_px must be at least 0 and smaller than tile_px")
        if self.test_time_flips not in TEST_TIME_FLIPS:
            raise ValueError(f"test_time_flips must be 1, 2 or 4, not {self.test_time_flips}")
        if self.max_nm_per_px <= 0:
            raise ValueError("max_nm_per_px must be positive")
        if self.batch_tiles < 1 or self.min_area_px < 1 or self.threads < 0:
            raise ValueError("batch_tiles and min_area_px must be at least 1, threads at least 0")
