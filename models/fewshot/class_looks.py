"""A new look for each class of an episode (``TrainConfig.class_looks``): defects as another microscope shows them.

Another microscope (tip orbital, bias, set-point) shows each defect class with another size,
shape and contrast, and not the same change for every class: one class grows and turns dark
while another stays as it was. The operator's click shows the class in *that* look, and the
embedding must then find the same look again, among classes that changed in their own ways.
Training on the simulator's looks alone fits the simulator (docs/adapt.md: a net trained longer on
them was worse on the foreign style).

So in a training episode, each class is given, with probability ``share``, one look of its own,
drawn once and applied to all its support and query crops alike (the episode stays solvable; what
is new is the look):

- a stretch about the crop centre: a size factor 0.75-1.35 and an anisotropy 0.7-1.45 along a
  random axis (a turned, elongated or squashed defect; the centre stays where it was);
- a contrast change: a power law ``sign(x) |x|^gamma``, gamma 0.6-1.6, and an inversion (bright
  becomes dark) with probability 0.3;
- with probability 0.5, a blur of 0.3-1.2 px (a blunter tip for this class's orbital).

The look is blended in over the defect's region only (full inside ``inner_px`` of the centre,
none beyond ``outer_px``), so that every class of an episode keeps the same lattice and noise
around it (the lattice within the core changes with the defect). Crops are square
``(n, C, H, W)`` in the display frame (rows = scan lines), with the values the training episode
draws (each crop is normalised on its own after the looks, when the net wants that).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

RANGES = {
    "size": (0.75, 1.35),
    "anisotropy": (0.7, 1.45),
    "angle": (0.0, np.pi),  # of the stretch's long axis, from the rows' direction (rad)
    "gamma": (0.6, 1.6),
    "invert": 0.3,
    "blur_share": 0.5,
    "blur_px": (0.3, 1.2),
}


def _radial_weight(h: int, w: int, inner_px: float, outer_px: float) -> np.ndarray:
    """``(h, w)``: 1 within ``inner_px`` of the crop centre, 0 beyond ``outer_px``, a smooth step between."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    t = np.clip((outer_px - r) / (outer_px - inner_px), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def class_look(crops: np.ndarray, rng: np.random.Generator, inner_px: float = 6.0, outer_px: float = 11.0) -> np.ndarray:
    """``crops`` ``(n, C, H, W)`` all given one look drawn from ``rng`` (see the module text)."""
    n, c, h, w = crops.shape
    if h != w:
        raise ValueError(f"class looks need square crops, not {h}x{w}")
    size = rng.uniform(*RANGES["size"])
    aniso = rng.uniform(*RANGES["anisotropy"])
    angle = rng.uniform(*RANGES["angle"])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # output = scale @ input about the centre, in (row, col): angle 0 stretches along the rows' axis
    scale = rot @ np.diag([size * aniso, size / aniso]) @ rot.T
    inverse = np.linalg.inv(scale)  # affine_grid maps output coordinates to where they are sampled
    theta = torch.zeros(n, 2, 3, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 1] = float(inverse[1, 1]), float(inverse[1, 0])  # (x, y) = (col, row)
    theta[:, 1, 0], theta[:, 1, 1] = float(inverse[0, 1]), float(inverse[0, 0])
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    looked = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()
    gamma = rng.uniform(*RANGES["gamma"])
    looked = np.sign(looked) * np.abs(looked) ** gamma
    if rng.random() < RANGES["invert"]:
        looked = -looked
    if rng.random() < RANGES["blur_share"]:
        looked = ndimage.gaussian_filter(looked, (0, 0, *(2 * [rng.uniform(*RANGES["blur_px"])])))
    weight = _radial_weight(h, w, inner_px, outer_px)
    return (weight * looked + (1.0 - weight) * crops).astype(np.float32)


def episode_class_looks(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray,
                        rng: np.random.Generator, share: float) -> tuple[np.ndarray, np.ndarray]:
    """The episode's crops with each class (with probability ``share``) given one look of its own,
    the same for its support and query crops."""
    support, query = support.copy(), query.copy()
    for label in np.unique(support_labels):
        if rng.random() >= share:
            continue
        s, q = support_labels == label, query_labels == label
        both = class_look(np.concatenate([support[s], query[q]]), rng)
        support[s], query[q] = both[:s.sum()], both[s.sum():]
    return support, query
