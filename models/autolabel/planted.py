"""Auto-labels from a detector that learns on the lab's own scans, self-supervised with planted defects.

The cluster rule (:mod:`.label`) finds most bright defects, but few of the faint and dark ones:
they share their clusters with the lattice's extremes, scan-line artefacts and noise
(docs/autolabel.md, "Where the recall is lost"). A network can learn to tell a compact bump or pit
from those, if it is shown examples *on these scans*. No labels exist, so examples are made:

1. the cluster rule labels every scan (:func:`.label.autolabel`); its components are kept as
   defects (mostly the bright ones);
2. patches of the scans' model images get synthetic defects added (:func:`plant_defects`):
   anisotropic Gaussian bumps and pits 0.15-0.7 nm wide (sigma along the long axis), up to 2.5
   times as long as wide, at any angle, their height a log-uniform 2-40 times the scan's noise
   spread (:func:`residual_spread`), on both channels alike; each patch is planted twice over
   (a surface may have its own ranges: :func:`plant_settings`);
3. a small UNet (:mod:`..unet`, the segmenter's own training: :func:`..train_unet.train`, with its
   flips and extra experimental noise) learns to mark the planted defects and the cluster rule's
   components, and nothing else: the scans' lattice, steps, scan lines and noise are its
   negatives;
4. the detector's defects with a mean probability of at least :data:`CONFIDENT` are the
   auto-labels (:func:`detector_mask`). The detector never saw a double tip and marks both of
   its copies alike, so its ghosts are told by the copies' strength
   (:func:`~stmwatch.models.double_tip.resolve_marked_both`), not by which copy was marked as for
   the shipped UNets (:func:`detector_segmenter`). Optionally (``PlantSettings.ghost_share``, off:
   tried, not kept) planted bumps get a double tip's copy.

Nothing about the surface's defect classes is used: only that defects are compact, rare bumps or
pits. Planting and training are on the model grid (``preprocess.prepare``: 0.1 nm per pixel,
display frame); the masks are on each scan's own grid.
Chosen on tuning scans (seeds 8 700 000+) and measured on held-out ones: docs/autolabel.md.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from stmwatch.drivers.scan import Scan

from ..double_tip import feature_band
from ..preprocess import Prepared
from ..train_unet import Patches, disc_target, split_validation, train
from ..unet import UNet, UNetConfig
from . import CONFIDENT, MEMBERS
from .features import gaussian

log = logging.getLogger(__name__)

MODEL_NM_PER_PX = 0.1  # every surface's model grid (``Surface.nm_per_px``), as in train_unet


@dataclasses.dataclass
class PlantSettings:
    """How defects are planted and the detector trained (defaults: the settings measured in
    docs/autolabel.md). Lengths in nm; ``rate`` planted defects per ``patch``² model pixels
    (Poisson mean); ``amplitude`` the height range in units of :func:`residual_spread`."""

    rate: float = 6.0
    # 2-40 and 0.15-0.7 nm with 40 epochs: large and bright defects are learnt too (stop 27; at stop 23
    # 2-12 had fewer false positives than 1-12); some surfaces keep their own (SURFACE_PLANTING)
    amplitude: tuple[float, float] = (2.0, 40.0)
    sigma_nm: tuple[float, float] = (0.15, 0.7)
    max_aspect: float = 2.5
    min_separation_nm: float = 1.0
    ghost_share: float = 0.0  # share of planted patch copies imaged as by a double tip (a fainter copy of each bump)
    ghost_nm: tuple[float, float] = (0.6, 2.0)  # the second apex's distance from the first
    ghost_ratio: tuple[float, float] = (0.6, 0.95)  # the copy's height over the bump's
    patch: int = 96
    per_scan: int = 10  # patch places per scan, at most (about one per patch² of model image)
    copies: int = 2  # planted versions of each patch
    disc_nm: float = 0.4  # the training target around each defect, as for the segmenter
    width: int = 8
    epochs: int = 40
    steps: int = 50
    batch: int = 12
    lr: float = 3e-3
    val_fraction: float = 0.1
    seed: int = 0


# A surface's own planting and training where the defaults measured worse on it (docs/autolabel.md,
# stop 27): on TiO2(110) the wider, longer-trained detector lost recall (its small dark O vacancies).
SURFACE_PLANTING = MappingProxyType({
    "tio2110": MappingProxyType({"amplitude": (2.0, 12.0), "sigma_nm": (0.15, 0.5), "epochs": 20}),
})


def plant_settings(surface: str, **changes) -> PlantSettings:
    """The planting and training for ``surface`` (a :data:`~stmwatch.models.surfaces.SURFACES`
    key): the :class:`PlantSettings` defaults with the surface's own (:data:`SURFACE_PLANTING`),
    then ``changes`` (field=value) over them."""
    return dataclasses.replace(PlantSettings(**SURFACE_PLANTING.get(surface, {})), **changes)


def residual_spread(image: np.ndarray, valid: np.ndarray, nm_per_px: float = MODEL_NM_PER_PX) -> float:
    """The scan's noise scale: the robust spread (MAD × 1.4826) of its lattice-free residual
    (``double_tip.feature_band``, terraces above 1.2 nm taken out) smoothed at 0.2 nm, mean of the
    channels of ``image`` ``(C, H, W)``; in the image's units."""
    spreads = []
    for channel in np.asarray(image, dtype=np.float32):
        residual = feature_band(channel, valid, nm_per_px, small_nm=0.0, large_nm=1.2)
        smooth = gaussian(torch.from_numpy(residual.astype(np.float32))[None, None], 0.2 / nm_per_px)[0, 0].numpy()
        values = smooth[valid] if valid.any() else smooth.ravel()
        spreads.append(float(np.median(np.abs(values - np.median(values)))) * 1.4826)
    return float(np.mean(spreads))


def plant_defects(image: np.ndarray, valid: np.ndarray, spread: float, rng: np.random.Generator,
                  settings: PlantSettings | None = None, nm_per_px: float = MODEL_NM_PER_PX,
                  avoid: np.ndarray | None = None,
                  ghost: tuple[float, float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``image`` ``(C, H, W)`` with synthetic defects added (see the module docstring), and their
    centres ``(n, 2)`` model-pixel row/col. Centres lie on ``valid`` pixels, at least
    ``min_separation_nm`` from each other and from the points ``avoid`` ``(k, 2)`` (defects
    already there). ``ghost`` ``(rows, cols, ratio)``: a second tip apex that images each bump
    again, ``ratio`` as high, displaced by ``(rows, cols)`` model pixels (pits it would fill in, so
    they stay single); the centres are the bumps', not the copies'. The input is not changed."""
    s = settings or PlantSettings()
    c, h, w = image.shape
    avoid = np.zeros((0, 2)) if avoid is None else np.asarray(avoid, dtype=float).reshape(-1, 2)
    sep2 = (s.min_separation_nm / nm_per_px) ** 2
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.array(image, dtype=np.float32, copy=True)
    placed: list[tuple[float, float]] = []
    wanted, tries = int(rng.poisson(s.rate * h * w / s.patch**2)), 0
    while len(placed) < wanted and tries < 20 * max(wanted, 1):
        tries += 1
        r, q = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
        if not valid[int(round(r)), int(round(q))]:
            continue
        near = np.concatenate([avoid, np.array(placed).reshape(-1, 2)])
        if len(near) and (((near - (r, q)) ** 2).sum(axis=1) < sep2).any():
            continue
        long_px = rng.uniform(*s.sigma_nm) / nm_per_px
        short_px = long_px / rng.uniform(1.0, s.max_aspect)
        angle = rng.uniform(0, np.pi)
        height = spread * np.exp(rng.uniform(*np.log(s.amplitude))) * rng.choice((-1.0, 1.0))
        out += (height * _gaussian(rows - r, cols - q, long_px, short_px, angle))[None].astype(np.float32)
        if ghost is not None and height > 0:
            copy = _gaussian(rows - r - ghost[0], cols - q - ghost[1], long_px, short_px, angle)
            out += (ghost[2] * height * copy)[None].astype(np.float32)
        placed.append((r, q))
    return out, np.array(placed, dtype=float).reshape(-1, 2)


def _gaussian(dr: np.ndarray, dc: np.ndarray, long_px: float, short_px: float, angle: float) -> np.ndarray:
    """A unit-height anisotropic Gaussian at row/col offsets ``(dr, dc)`` (pixels) from its centre:
    sigma ``long_px`` along ``angle`` (radians from the row axis), ``short_px`` across."""
    u = dr * np.cos(angle) + dc * np.sin(angle)
    v = -dr * np.sin(angle) + dc * np.cos(angle)
    return np.exp(-0.5 * ((u / long_px) ** 2 + (v / short_px) ** 2))


def draw_ghost(rng: np.random.Generator, settings: PlantSettings,
               nm_per_px: float = MODEL_NM_PER_PX) -> tuple[float, float, float] | None:
    """A double tip for one planted copy of a patch, with probability ``ghost_share``: ``(rows, cols)``
    model pixels from each bump to its copy (any direction) and the copy's height ratio; else
    ``None``. Draws nothing from ``rng`` when ``ghost_share`` is 0."""
    s = settings
    if s.ghost_share <= 0 or rng.random() >= s.ghost_share:
        return None
    distance, angle = rng.uniform(*s.ghost_nm) / nm_per_px, rng.uniform(0, 2 * np.pi)
    return distance * np.sin(angle), distance * np.cos(angle), float(rng.uniform(*s.ghost_ratio))


def planted_patches(prepared: Prepared, known: np.ndarray, rng: np.random.Generator,
                    settings: PlantSettings | None = None) -> Patches:
    """Training patches of one scan: up to ``per_scan`` random squares of its model image, each
    planted ``copies`` times (:func:`plant_defects`, away from the ``known`` defects ``(k, 2)``
    model pixels); the target is a disc round every planted and every known defect."""
    s = settings or PlantSettings()
    image = np.where(prepared.valid, prepared.image, 0.0).astype(np.float32)
    spread = residual_spread(image, prepared.valid)
    c, h, w = image.shape
    ph, pw = max(h, s.patch), max(w, s.patch)
    image = np.pad(image, ((0, 0), (0, ph - h), (0, pw - w)))
    valid = np.pad(prepared.valid, ((0, ph - h), (0, pw - w)))
    known = np.asarray(known, dtype=float).reshape(-1, 2)
    radius, margin = s.disc_nm / MODEL_NM_PER_PX, s.min_separation_nm / MODEL_NM_PER_PX
    known_target = disc_target((ph, pw), known[:, 0], known[:, 1], radius)  # a disc cut by the window still counts
    images, targets, centres = [], [], []
    for _ in range(int(np.clip(round(h * w / s.patch**2), 2, s.per_scan))):
        r0, c0 = int(rng.integers(0, ph - s.patch + 1)), int(rng.integers(0, pw - s.patch + 1))
        local = known - (r0, c0)
        inside = local[((local >= 0) & (local < s.patch)).all(axis=1)]
        near = local[((local >= -margin) & (local < s.patch + margin)).all(axis=1)]
        window = (slice(None), slice(r0, r0 + s.patch), slice(c0, c0 + s.patch))
        for _ in range(s.copies):
            planted, points = plant_defects(image[window], valid[window[1:]], spread, rng, s, avoid=near,
                                            ghost=draw_ghost(rng, s))
            images.append(planted)
            targets.append(np.maximum(known_target[window[1:]],
                                      disc_target((s.patch, s.patch), points[:, 0], points[:, 1], radius)))
            centres.append(np.concatenate([points, inside]))
    return Patches(np.stack(images).astype(np.float32), np.stack(targets).astype(np.float32), centres)


def train_detector(scans: Sequence[tuple[Prepared, np.ndarray]], out: Path, settings: PlantSettings | None = None,
                   *, device: str = "cpu", progress: bool = True, meta: dict | None = None) -> Path:
    """Train the planted-defect detector on ``scans``: ``(prepared scan, known defects (k, 2) model
    pixels)`` each; the last ``val_fraction`` of them (at least one, with two or more) for the
    validation F1 (on planted patches); with a single scan, its own patches serve for both, so
    the best epoch is chosen on training patches. Writes ``out/best.pt`` (and ``last.pt``); returns the
    path of ``best.pt``, a stmwatch UNet checkpoint any segmenter loads."""
    s = settings or PlantSettings()
    if not scans:
        raise ValueError("no scans to train the planted-defect detector on")
    rng = np.random.default_rng(s.seed)
    data, val = split_validation([planted_patches(prepared, known, rng, s) for prepared, known in scans],
                                 s.val_fraction)
    log.info("planted-defect detector: %d training, %d validation patches from %d scans", len(data), len(val), len(scans))
    torch.manual_seed(s.seed)
    model = UNet(UNetConfig(width=s.width, depth=3))
    train(model, data, val, out, epochs=s.epochs, steps=s.steps, batch=s.batch, lr=s.lr, seed=s.seed, device=device,
          noise=0.5, meta={"name": "planted-detector", **(meta or {}), "plant": dataclasses.asdict(s)},
          progress=progress)
    return out / "best.pt"


# How a network trained on planted defects is run: components below this mean probability left out,
# a double tip's ghosts found by pairs. ``train unet --labels --plant`` writes it into the weights'
# meta ("decode"), which :func:`~stmwatch.models.load.load_segmenter` applies.
DETECTOR_DECODING = MappingProxyType({"min_score": CONFIDENT, "ghost_method": "pairs"})


class MeanBackend:
    """A backend (:mod:`..backends`) that is the mean probability of several detectors' backends:
    an ensemble of detectors trained alike from other seeds, decoded as one detector."""

    def __init__(self, members: Sequence):
        self.members = list(members)
        self.name = "mean of " + ", ".join(getattr(m, "name", "?") for m in self.members)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.mean([member(batch) for member in self.members], axis=0).astype(np.float32)


def detector_paths(path: str | Path) -> list[Path]:
    """The detector files at ``path``: the file itself, or in a folder that ``autolabel`` trained
    into (``OUT/detector``) its members' ``member<i>/best.pt`` in the order of ``i``, else its
    ``best.pt``."""
    path = Path(path)
    if path.is_dir():
        members = sorted((int(m.group(1)), p / "best.pt") for p in path.iterdir()
                         if (m := re.fullmatch(r"member(\d+)", p.name)) and (p / "best.pt").is_file())
        if members:
            return [p for _, p in members]
        if not (path / "best.pt").is_file():
            raise FileNotFoundError(f"planted-defect detector {path}: no best.pt nor member*/best.pt in it")
        return [path / "best.pt"]
    if not path.is_file():
        raise FileNotFoundError(f"planted-defect detector {path}: no such file")
    return [path]


def detector_segmenter(paths: str | Path | Sequence[str | Path], surface: str,
                       confident: float = CONFIDENT) -> Callable[[Scan], list]:
    """The ``segment`` method of a segmenter running the detector at ``paths`` (a file, a folder
    of :func:`detector_paths`, or several of them: then the mean of their probabilities, each
    the mean of the default flips, decoded once): the default segmenter settings (threshold,
    flips) but the weights, and eager torch (each detector is new, so an ONNX or TensorRT export
    cached by its hash would never be used again). Its components below ``confident`` mean
    probability are left out, and a double tip's ghosts are handled for a network that marks
    both copies alike (``ghost_method="pairs"``,
    :func:`~stmwatch.models.double_tip.resolve_marked_both`): the detector never saw a double tip.
    On 100 tuning scans per surface and two detectors that took the auto-labels' mean F1 from 0.616
    to 0.700 over the shipped UNet's handling, which reads the ghosts' side from the copy the network
    marked (docs/autolabel.md, stop 22). Two detectors averaged: +0.012 on the mean of the three
    surfaces on training-style scans, but lower on the foreign style, where the detectors are
    unsure and their mean passes ``confident`` less often (stop 30)."""
    from ..load import load_segmenter
    from ..settings import ModelSettings
    from ..surfaces import get_surface

    files = [f for p in ([paths] if isinstance(paths, (str, Path)) else paths) for f in detector_paths(p)]
    if not files:
        raise ValueError("no planted-defect detector given")
    segmenters = [load_segmenter(dataclasses.replace(ModelSettings(), segmenter_weights=str(f), backend="torch"),
                                 get_surface(surface)) for f in files]
    segmenter = segmenters[0]
    if len(segmenters) > 1:  # all loaded with the same settings: one preprocessing, threshold and decoding
        segmenter.backend = MeanBackend([s.backend for s in segmenters])
        segmenter.version = "+".join(s.version for s in segmenters)
    segmenter.ghost_method, segmenter.min_score = DETECTOR_DECODING["ghost_method"], confident
    return segmenter.segment


def train_members(scans: Sequence[tuple[Scan | Callable[[], Scan], Prepared, np.ndarray]], out: Path, surface: str,
                  settings: PlantSettings | None = None, *, members: int = MEMBERS, rounds: int = 2,
                  confident: float = CONFIDENT, device: str = "cpu", progress: bool = True,
                  announce: Callable[[str], None] = log.info) -> tuple[list[Path], Callable[[Scan], list]]:
    """:func:`train_rounds` ``members`` times on the same ``scans``, with the seeds ``settings.seed``,
    ``+1`` ... (into ``out/member<i>/``; one member: into ``out`` itself), and the ``segment`` of
    their mean (:func:`detector_segmenter`). Returns the members' ``best.pt`` paths and it. What an
    earlier run left in ``out`` (members, rounds, ``best.pt``) is removed first, so that
    :func:`detector_paths` of ``out`` finds this run's detectors only."""
    import shutil

    if members < 1:
        raise ValueError(f"members must be 1 or more, not {members}")
    if out.is_dir():
        for old in out.iterdir():
            if re.fullmatch(r"(member|round)\d+", old.name) and old.is_dir():
                shutil.rmtree(old)
            elif old.name == "best.pt":
                old.unlink()
    s = settings or plant_settings(surface)
    paths = []
    for i in range(members):
        folder = out if members == 1 else out / f"member{i}"
        if members > 1:
            announce(f"detector {i + 1} of {members} (seed {s.seed + i})")
        paths.append(train_rounds(scans, folder, surface, dataclasses.replace(s, seed=s.seed + i), rounds=rounds,
                                  confident=confident, device=device, progress=progress, announce=announce)[0])
    return paths, detector_segmenter(paths, surface, confident)


def train_rounds(scans: Sequence[tuple[Scan | Callable[[], Scan], Prepared, np.ndarray]], out: Path, surface: str,
                 settings: PlantSettings | None = None, *, rounds: int = 2, confident: float = CONFIDENT,
                 device: str = "cpu", progress: bool = True, announce: Callable[[str], None] = log.info) -> tuple[Path, Callable[[Scan], list]]:
    """Train the detector in ``rounds`` rounds on ``scans``: ``(scan, prepared scan, known defects
    (k, 2) model pixels)`` each, the known ones being the cluster rule's; the scan may be a function
    that reads it (so that a large folder's scans need not all be held in memory). Each round after
    the first replaces the known defects by the previous detector's (mean probability ≥
    ``confident``). Round ``k`` is written to ``out/round<k>/``, the last one's ``best.pt`` copied to
    ``out/best.pt``. ``settings``: :func:`plant_settings` of ``surface`` unless given. Returns that
    path and the last detector's ``segment``."""
    import shutil

    if rounds < 1:
        raise ValueError(f"rounds must be 1 or more, not {rounds}")
    s = settings or plant_settings(surface)
    known = [points for _, _, points in scans]
    for round_ in range(1, rounds + 1):
        folder = out / f"round{round_}"
        announce(f"round {round_} of {rounds}: training the planted-defect detector on {len(scans)} scans "
                 f"({s.epochs} x {s.steps} steps) into {folder}")
        path = train_detector([(prepared, points) for (_, prepared, _), points in zip(scans, known)], folder, s,
                              device=device, progress=progress, meta={"surfaces": [surface], "round": round_})
        segment = detector_segmenter(path, surface, confident)
        if round_ < rounds:
            previous, known = known, []
            for (scan, prepared, _), before in zip(scans, previous):
                try:
                    scan = scan() if callable(scan) else scan
                    known.append(defect_points(prepared, detector_mask(scan, segment, confident)[1]))
                except Exception as exc:  # unreadable since, or the detector failed on it: as before
                    announce(f"{getattr(scan, 'name', 'a scan')}: {exc}; round {round_ + 1} keeps its earlier defects")
                    known.append(before)
    shutil.copyfile(path, out / "best.pt")
    return out / "best.pt", segment


def defect_points(prepared: Prepared, defects: Sequence) -> np.ndarray:
    """Model-grid ``(n, 2)`` row/col of ``defects`` (each with scan display-frame ``row``, ``col``)."""
    rows, cols = prepared.from_scan(np.array([d.row for d in defects], dtype=float),
                                    np.array([d.col for d in defects], dtype=float))
    return np.stack([np.atleast_1d(rows), np.atleast_1d(cols)], axis=1).reshape(-1, 2)


def detector_mask(scan: Scan, segment: Callable[[Scan], list], confident: float = CONFIDENT,
                  disc_nm: float = 0.2) -> tuple[np.ndarray, list]:
    """The auto-label mask of ``scan`` from a detector: ``segment`` (a segmenter's ``segment``
    method, whose double-tip handling applies) gives the defects; those with ``score`` at least
    ``confident`` are kept and each is drawn as a disc of radius ``disc_nm`` (at least its own
    pixel) on the scan's ``(rows, columns)`` grid, display frame. Returns ``(mask uint8, kept
    defects)``."""
    kept = [d for d in segment(scan) if d.score >= confident]
    mask = np.zeros(scan.shape, dtype=np.uint8)
    col_nm, row_nm = np.asarray(scan.pixel_size_m, dtype=float) * 1e9  # (x, y) = (column, row) pixel sizes
    reach = (int(np.ceil(disc_nm / row_nm)), int(np.ceil(disc_nm / col_nm)))
    for d in kept:
        r, c = int(np.clip(round(d.row), 0, scan.shape[0] - 1)), int(np.clip(round(d.col), 0, scan.shape[1] - 1))
        mask[r, c] = 1
        r0, c0 = max(0, r - reach[0]), max(0, c - reach[1])
        rows, cols = np.ogrid[r0:min(scan.shape[0], r + reach[0] + 1), c0:min(scan.shape[1], c + reach[1] + 1)]
        mask[r0:r0 + rows.shape[0], c0:c0 + cols.shape[1]] |= (
            ((rows - d.row) * row_nm) ** 2 + ((cols - d.col) * col_nm) ** 2 <= disc_nm**2).astype(np.uint8)
    return mask, kept
