"""Loading defect crops from disk into the classifier's input form.

A crop set on disk is ``<dir>/<surface>/<class>/*.npy`` (PNG and TIFF are accepted too). Every
crop, whatever its source, goes through :func:`to_model_input`: it becomes a float32
``(channels, size, size)`` array (``channels`` = 2: forward and backward topography; a 1-channel
crop is used twice) resized with bilinear interpolation to ``size`` pixels square. This is the one
crop loader of the project: training, evaluation, the shipped classifier and ``support add`` all
use it.

A crop may have a sidecar ``<name>.json`` (``support add`` writes one): the scan it was cut from,
the clicked pixel and the scan's sample bias ``bias_v`` (V). Defects look different in filled and
empty states, so the classifier prefers the clicks made at the polarity of the scan it labels
(:mod:`.transductive`).

Units: ``.npy`` crops are taken as they are (the model's normalised units: median 0, robust spread
1, see docs/design.md). Images (PNG/TIFF) carry arbitrary grey levels, so they are normalised per
crop to median 0 and robust spread 1.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stmwatch.models.robust import robust_sigma

log = logging.getLogger(__name__)

INPUT_SIZE = 32  # pixels; 3.2 nm at the model scale of 0.1 nm/px
INPUT_CHANNELS = 2
CROP_SUFFIXES = (".npy", ".png", ".tif", ".tiff")


def robust_normalise(image: np.ndarray) -> np.ndarray:
    """``image`` minus its median, divided by its robust spread (1.4826 × median absolute deviation,
    or the standard deviation if that is zero; unchanged spread if the image is flat)."""
    image = image.astype(np.float32)
    centred = image - np.median(image)
    spread = robust_sigma(centred)
    return centred / spread if spread > 1e-12 else centred


def normalise_crop(crop: np.ndarray) -> np.ndarray:
    """One crop ``(C, h, w)`` (all channels together) to median 0 and robust spread 1, as the
    simulator's training crops are (:func:`stmwatch.models.sim.simulate.normalise`); a crop cut
    from a whole prepared scan carries the *scan's* scale instead. Idempotent."""
    return robust_normalise(np.nan_to_num(np.asarray(crop, dtype=np.float32)))


def normalise_crops(crops: np.ndarray) -> np.ndarray:
    """:func:`normalise_crop` of each crop of ``(n, C, h, w)``."""
    return np.stack([normalise_crop(c) for c in crops]) if len(crops) else np.asarray(crops, np.float32)


def to_model_input(crops: np.ndarray, size: int = INPUT_SIZE, channels: int = INPUT_CHANNELS) -> np.ndarray:
    """Crops of any size and 1 or 2 channels → float32 ``(n, channels, size, size)``.

    ``crops`` is ``(h, w)``, ``(c, h, w)`` or ``(n, c, h, w)``; a 1-channel crop is repeated to
    ``channels``, extra channels are dropped, and a crop that is not ``size`` square is resized
    with bilinear interpolation (so crops from any source and scale are accepted).
    """
    x = np.asarray(crops, dtype=np.float32)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"crops must be (h, w), (c, h, w) or (n, c, h, w), not shape {x.shape}")
    if x.shape[1] == 1 and channels > 1:
        x = np.repeat(x, channels, axis=1)
    x = x[:, :channels]
    if x.shape[1] != channels:
        raise ValueError(f"crops have {x.shape[1]} channels, the model needs {channels}")
    if x.shape[2:] != (size, size):
        t = F.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=(size, size), mode="bilinear",
                          align_corners=False)
        x = t.numpy()
    return np.ascontiguousarray(np.nan_to_num(x), dtype=np.float32)


def load_crop(path: Path | str) -> np.ndarray:
    """One crop file as float32 ``(c, h, w)``, not yet resized (see :func:`to_model_input`)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        x = np.load(path).astype(np.float32)
        return x[None] if x.ndim == 2 else x
    from PIL import Image  # images only

    with Image.open(path) as img:
        frames = []
        for i in range(getattr(img, "n_frames", 1)):  # a multi-page TIFF: one page per channel
            img.seek(i)
            a = np.asarray(img.convert("F") if img.mode not in ("F", "I;16", "I") else img, dtype=np.float32)
            frames.append(a)
    x = np.stack(frames)
    return np.stack([robust_normalise(f) for f in x])


def bias_polarity(bias_v: float | None) -> int:
    """The sign of a sample bias (V): +1 empty states, -1 filled states, 0 unknown (None, NaN or 0)."""
    return int(np.sign(bias_v)) if bias_v is not None and np.isfinite(bias_v) else 0


def crop_bias(path: Path | str) -> float:
    """The sample bias (V) of the scan a crop file was cut from, from its sidecar ``<name>.json``;
    NaN when there is none or it does not say."""
    sidecar = Path(path).with_suffix(".json")
    try:
        value = json.loads(sidecar.read_text()).get("bias_v")
        return float(value) if value is not None else float("nan")
    except (OSError, ValueError, TypeError, AttributeError):
        return float("nan")


@dataclasses.dataclass
class CropSet:
    """The crops of one surface: ``crops[label]`` is float32 ``(n, C, size, size)``; ``bias_v[label]``
    (optional) the sample bias (V) of each crop's scan, NaN where unknown."""

    surface: str
    crops: dict[str, np.ndarray]
    bias_v: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted(self.crops)

    def polarity(self, label: str) -> np.ndarray:
        """The sign of each crop's bias in class ``label``: +1 empty states, -1 filled states, 0 unknown."""
        bias = self.bias_v.get(label)
        n = len(self.crops[label])
        if bias is None or len(bias) != n:
            return np.zeros(n, np.int8)
        return np.array([bias_polarity(b) for b in bias], np.int8)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in sorted(self.crops.items())}


def crop_files(folder: Path | str) -> list[Path]:
    """The crop files of a class folder, in file-name order."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in CROP_SUFFIXES)


def load_class_folder(folder: Path | str, size: int = INPUT_SIZE) -> np.ndarray:
    """Every crop file in ``folder`` as float32 ``(n, C, size, size)``, in file-name order."""
    files = crop_files(folder)
    if not files:
        return np.zeros((0, INPUT_CHANNELS, size, size), np.float32)
    return np.concatenate([to_model_input(load_crop(p), size) for p in files])


def load_surface(root: Path | str, surface: str | None = None, size: int = INPUT_SIZE,
                 min_per_class: int = 1) -> CropSet:
    """The crop set ``root/surface/<class>/*`` (or ``root/<class>/*`` when ``surface`` is None).

    Classes with fewer than ``min_per_class`` crops are left out (with a log line)."""
    folder = Path(root) / surface if surface else Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"no crop folder {folder}")
    crops, bias = {}, {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        x = load_class_folder(sub, size)
        if len(x) < min_per_class:
            log.info("class %s of %s has %d crops (< %d): left out", sub.name, folder, len(x), min_per_class)
            continue
        crops[sub.name] = x
        bias[sub.name] = np.array([crop_bias(p) for p in crop_files(sub)], float)
    if not crops:
        raise FileNotFoundError(f"no crops in {folder} (expected <class>/*.npy|png|tif)")
    return CropSet(surface or folder.name, crops, bias)
