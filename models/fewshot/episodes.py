"""N-way K-shot episodes, training augmentation and the method's class-generation ablation.

An episode draws ``way`` classes of one surface, then ``shot`` support and ``query`` query crops
of each, all distinct. Labels inside an episode are 0..way-1 in the order the classes were drawn.
This is the one episode sampler of the project: training and evaluation both use it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from .crops import CropSet

# the data manipulations that make a new class out of an existing one (the method's ablation)
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rot90": lambda x: np.rot90(x, 1, axes=(-2, -1)),
    "rot180": lambda x: np.rot90(x, 2, axes=(-2, -1)),
    "rot270": lambda x: np.rot90(x, 3, axes=(-2, -1)),
    "flip_h": lambda x: x[..., ::-1],
    "flip_v": lambda x: x[..., ::-1, :],
    "invert": lambda x: -x,
    "zoom": lambda x: _zoom(x, 2.0),
}
DEFAULT_GENERATE = ("invert", "zoom")


def _zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre of crops ``(..., H, W)`` magnified ``factor`` times (bilinear), same shape: at the
    fixed model scale, a defect ``factor`` times as large."""
    import torch
    import torch.nn.functional as F

    shape = x.shape
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, *shape[-2:])
    h, w = shape[-2:]
    dh, dw = int(round(h / factor)), int(round(w / factor))
    t = t[..., (h - dh) // 2:(h - dh) // 2 + dh, (w - dw) // 2:(w - dw) // 2 + dw]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False).reshape(shape).numpy()


@dataclasses.dataclass
class Episode:
    """Support ``(way*shot, C, H, W)`` and query ``(way*query, C, H, W)`` float32 crops with int64
    labels 0..way-1; ``classes[i]`` is the class name of label ``i``."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    classes: list[str]


def sample_episode(crop_set: CropSet, way: int, shot: int, query: int, rng: np.random.Generator,
                   classes: Sequence[str] | None = None) -> Episode:
    """One episode from ``crop_set`` (classes drawn from ``classes``, default all of them).

    Raises ``ValueError`` when there are fewer than ``way`` classes with ``shot + query`` crops."""
    return episode_of(crop_set, draw_episode(crop_set, way, shot, query, rng, classes), shot)


def draw_episode(crop_set: CropSet, way: int, shot: int, query: int, rng: np.random.Generator,
                 classes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The draws of :func:`sample_episode` without the crops: ``{class: indices into its crops}``
    in the order the classes were drawn, ``shot`` support indices first, then ``query`` query ones
    (so an evaluation can look up crops it embedded once, with the very same random draws)."""
    pool = [c for c in (classes if classes is not None else crop_set.labels)
            if len(crop_set.crops[c]) >= shot + query]
    if len(pool) < way:
        raise ValueError(f"{crop_set.surface}: only {len(pool)} classes have {shot + query} crops; "
                         f"a {way}-way episode needs {way}")
    chosen = [pool[i] for i in rng.choice(len(pool), size=way, replace=False)]
    return {c: rng.choice(len(crop_set.crops[c]), size=shot + query, replace=False) for c in chosen}


def episode_of(crop_set: CropSet, draw: dict[str, np.ndarray], shot: int) -> Episode:
    """The :class:`Episode` of a :func:`draw_episode` draw (its first ``shot`` indices of each class
    are the support crops)."""
    labels = np.arange(len(draw), dtype=np.int64)
    query = len(next(iter(draw.values()))) - shot
    return Episode(np.concatenate([crop_set.crops[c][idx[:shot]] for c, idx in draw.items()]), np.repeat(labels, shot),
                   np.concatenate([crop_set.crops[c][idx[shot:]] for c, idx in draw.items()]),
                   np.repeat(labels, query), list(draw))


def augment(x: np.ndarray, rng: np.random.Generator, shift_px: int = 2, noise: float = 0.1,
            gain: tuple[float, float] = (0.8, 1.25), dihedral: bool = False, strong: bool = False) -> np.ndarray:
    """Training augmentation of square crops ``(n, C, H, W)``: a random shift of up to ``shift_px``
    pixels (edges repeated), with ``dihedral`` a random turn by a multiple of 90 degrees and a
    random mirror (off by default: it turns the fast-scan artefacts and the forward/backward
    difference, which run along rows, into columns), a random gain, and Gaussian noise of standard deviation ``noise``
    (model units). The contrast sign and size are kept: generated classes change those.

    ``strong`` varies what differs between surfaces as well (see :func:`_vary_surface`): a scale
    jitter of ±15 %, a blur, a lattice-like periodic background, and a noise level drawn per crop
    (up to 3× ``noise``)."""
    if strong:
        x = _vary_surface(x, rng)
    out = np.empty_like(x)
    n, _, h, w = x.shape
    pad = np.pad(x, ((0, 0), (0, 0), (shift_px, shift_px), (shift_px, shift_px)), mode="edge")
    dy = rng.integers(0, 2 * shift_px + 1, n)
    dx = rng.integers(0, 2 * shift_px + 1, n)
    turns = rng.integers(0, 4, n) if dihedral else np.zeros(n, int)
    mirror = rng.random(n) < 0.5 if dihedral else np.zeros(n, bool)
    for i in range(n):
        crop = np.rot90(pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w], turns[i], axes=(-2, -1))
        out[i] = crop[..., ::-1] if mirror[i] else crop
    out *= rng.uniform(*gain, size=(n, 1, 1, 1)).astype(np.float32)
    sigma = rng.uniform(0.0, 3.0 * noise, size=(n, 1, 1, 1)) if strong else noise
    out += (rng.normal(0.0, 1.0, size=out.shape) * sigma).astype(np.float32)
    return out


def _vary_surface(x: np.ndarray, rng: np.random.Generator, scale: float = 0.15, blur: float = 1.0,
                  background: float = 0.5) -> np.ndarray:
    """Crops ``(n, C, H, W)`` changed the way one surface's images differ from another's: each crop
    magnified by a factor in [1 − ``scale``, 1 + ``scale``] about its centre, half of them blurred
    (Gaussian, sigma up to ``blur`` px: a blunter tip), and half given a periodic background of
    random period (3-10 px), direction and amplitude (up to ``background``): another lattice."""
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    n, c, h, w = x.shape
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    s = torch.from_numpy(rng.uniform(1 - scale, 1 + scale, n).astype(np.float32))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s  # output pixel -> input pixel: 1/s magnifies by s
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()
    for i in np.flatnonzero(rng.random(n) < 0.5):
        out[i] = gaussian_filter(out[i], sigma=(0, *(2 * [rng.uniform(0.3, blur)])))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in np.flatnonzero(rng.random(n) < 0.5):
        angle, period = rng.uniform(0, np.pi), rng.uniform(3.0, 10.0)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.cos(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
        out[i] += (rng.uniform(0.0, background) * wave).astype(np.float32)
    return out


def generate_classes(crop_set: CropSet, transforms: Sequence[str] = DEFAULT_GENERATE,
                     min_difference: float = 0.3) -> CropSet:
    """``crop_set`` plus, for each class and transform, a new class ``"<class>~<transform>"``.

    A generated class whose mean crop differs from its source's by less than ``min_difference``
    (L2 norm of the difference over the L2 norm of the source mean) is dropped: the rotation of a
    round defect is the defect itself, not a new class.
    """
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"unknown transforms {sorted(unknown)}; known: {sorted(TRANSFORMS)}")
    crops = dict(crop_set.crops)
    for label, x in crop_set.crops.items():
        mean = x.mean(axis=0)
        scale = float(np.linalg.norm(mean)) or 1.0
        for name in transforms:
            y = np.ascontiguousarray(TRANSFORMS[name](x))
            if float(np.linalg.norm(y.mean(axis=0) - mean)) / scale >= min_difference:
                crops[f"{label}~{name}"] = y
    return CropSet(crop_set.surface, crops)
