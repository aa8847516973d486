"""Toy crop sets with known answers (bright blob, dark pit, ring, bar, ...), for tests and demos.

Not STM physics (``stmwatch.models.sim.simulate`` is): just shapes that an embedding must tell apart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .crops import CropSet

SHAPES = ("blob", "pit", "ring", "bar", "dimer", "cross")


def shape_crop(shape: str, rng: np.random.Generator, size: int = 32, noise: float = 0.15) -> np.ndarray:
    """One ``(2, size, size)`` float32 crop of ``shape`` with random size, position (±1.5 px) and
    amplitude jitter, plus Gaussian noise of standard deviation ``noise``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    yy -= rng.uniform(-1.5, 1.5)
    xx -= rng.uniform(-1.5, 1.5)
    s = size / 10 * rng.uniform(0.8, 1.2)
    amp = rng.uniform(0.8, 1.2)
    r2 = (xx ** 2 + yy ** 2) / s ** 2
    if shape == "blob":
        img = np.exp(-r2)
    elif shape == "pit":
        img = -np.exp(-r2)
    elif shape == "ring":
        img = np.exp(-(np.sqrt(r2) - 1.6) ** 2 / 0.2)
    elif shape == "bar":
        img = np.exp(-(yy / s) ** 2 - (xx / (2.5 * s)) ** 2)
    elif shape == "dimer":
        img = np.exp(-((xx - s) ** 2 + yy ** 2) / s ** 2 * 2) + np.exp(-((xx + s) ** 2 + yy ** 2) / s ** 2 * 2)
    elif shape == "cross":
        img = np.exp(-(yy / (0.5 * s)) ** 2 - (xx / (3 * s)) ** 2) + np.exp(-(xx / (0.5 * s)) ** 2 - (yy / (3 * s)) ** 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    img = 2.0 * amp * img.astype(np.float32)
    out = np.stack([img, img]) + rng.normal(0, noise, (2, size, size)).astype(np.float32)
    return out.astype(np.float32)


def shape_set(shapes: tuple[str, ...] = SHAPES, per_class: int = 20, seed: int = 0, surface: str = "toy",
              noise: float = 0.15) -> CropSet:
    """A crop set of ``per_class`` crops of each shape."""
    rng = np.random.default_rng(seed)
    return CropSet(surface, {s: np.stack([shape_crop(s, rng, noise=noise) for _ in range(per_class)])
                             for s in shapes})


def write_set(crop_set: CropSet, root: Path | str) -> Path:
    """Write ``crop_set`` as ``root/<surface>/<class>/<n>.npy``; returns ``root/<surface>``."""
    folder = Path(root) / crop_set.surface
    for label, x in crop_set.crops.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(x):
            np.save(folder / label / f"{i}.npy", crop)
    return folder
