"""Training data from auto-labels: ``stmwatch train unet --labels DIR``.

``DIR`` is what ``stmwatch autolabel --out DIR`` wrote: ``<stem>.mask.npy`` per scan and
``autolabel.json`` with each scan's path and surface, all of one surface (an entry without a scan
path means ``DIR/<stem>.sxm`` beside its mask; a mask without an entry is refused: its surface is
unknown); :func:`check_labels` names every problem of ``DIR`` before any work. Each scan is
preprocessed exactly as at inference (``preprocess.prepare``); each component of its mask becomes
a defect at its centroid (the same reading of a mask as ``evaluate.mask_points_m``), brought to
the model grid, and the training target is the usual disc around each centre
(``train_unet.cut_patches``), so that the UNet learns the same kind of target as from the
simulator's truth, with the same augmentation and extra noise. With ``plant`` settings each scan
also gives planted patches as the planted-defect detector's (:func:`.planted.planted_patches`, its
auto-labels the known defects), so that the UNet sees faint defects as defects although its labels
miss some. No truth is read.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from ..train_unet import Patches, cut_patches, join, split_validation
from .command import MANIFEST, read_manifest
from .evaluate import mask_centroids
from .planted import MODEL_NM_PER_PX, PlantSettings, plant_settings, planted_patches

log = logging.getLogger(__name__)


def _listing(folder: Path) -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """``(scan path, mask path, surface)`` of each stem of ``folder`` (sorted; those with a mask or
    a manifest entry) whose files are there, and one ``<file>: <problem>`` line per problem found
    without reading a scan or a mask (see :func:`check_labels`)."""
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        return [], [f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}"]
    masks = {p.name[: -len(".mask.npy")]: p for p in folder.glob("*.mask.npy")}
    if not manifest_path.exists():
        if not masks:
            return [], [f"{folder}: no <stem>.mask.npy files (run stmwatch autolabel --out {folder} first)"]
        return [], [f"{manifest_path}: missing, so the scans and surface of the masks are unknown"]
    try:
        manifest = read_manifest(folder)
    except ValueError as exc:
        return [], [str(exc)]
    out, problems = [], []
    for stem in sorted(set(masks) | set(manifest)):
        mask = masks.get(stem, folder / f"{stem}.mask.npy")
        entry = manifest.get(stem)
        if entry is None:
            problems.append(f"{mask}: no entry in {manifest_path}, so its scan's surface is unknown")
            continue
        scan = Path(entry.get("scan", folder / f"{stem}.sxm"))
        if not isinstance(entry.get("surface"), str):
            problems.append(f"{mask}: no surface recorded in {manifest_path}")
        elif stem not in masks:
            problems.append(f"{mask}: missing (listed in {manifest_path})")
        elif not scan.is_file():
            problems.append(f"{scan}: missing (the scan of {mask.name})")
        else:
            out.append((scan, mask, entry["surface"]))
    surfaces = sorted({e["surface"] for e in manifest.values() if isinstance(e.get("surface"), str)})
    if len(surfaces) > 1:
        problems.append(f"{manifest_path}: labels of {len(surfaces)} surfaces ({', '.join(surfaces)}), but one "
                        "model is trained per surface: label each surface into its own folder")
    if not masks and not manifest:
        problems.append(f"{folder}: no <stem>.mask.npy files (run stmwatch autolabel --out {folder} first)")
    return out, problems


def labelled_scans(labels_dir: str | Path) -> list[tuple[Path, Path, str]]:
    """``(scan path, mask path, surface)`` for each mask in ``labels_dir``, sorted by stem; raises
    ValueError with the first problem :func:`_listing` finds (the files themselves are not read)."""
    out, problems = _listing(Path(labels_dir))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)
    return out


def check_labels(labels_dir: str | Path) -> list[str]:
    """Every problem of ``labels_dir`` for :func:`labelled_patches`, one ``<file>: <problem>`` line
    each (empty when there is none): the folder, its manifest (one surface), and for each entry
    that its mask and scan exist, the scan reads and the mask's shape is the scan's (rows,
    columns). Each scan is read once, nothing is kept."""
    from stmwatch.drivers.sxm import ScanReadError, read_sxm

    scans, problems = _listing(Path(labels_dir))
    for scan_path, mask_path, _ in scans:
        try:
            shape = read_sxm(scan_path).shape
        except ScanReadError as exc:
            problems.append(str(exc))
            continue
        try:
            mask_shape = np.load(mask_path).shape
        except (OSError, ValueError, EOFError) as exc:
            problems.append(f"{mask_path}: not a readable .npy mask ({exc})")
            continue
        if mask_shape != shape:
            problems.append(f"{mask_path}: mask of shape {mask_shape}, but its scan {scan_path.name} is {shape} "
                            "(rows, columns)")
    return problems


def mask_centres(mask: np.ndarray, prepared) -> np.ndarray:
    """``(n, 2)`` model-grid row/col of the defects of an auto-label ``mask`` (the scan's grid,
    display frame): each component at its centroid, brought to ``prepared``'s grid."""
    centres = mask_centroids(mask)
    rows, cols = prepared.from_scan(centres[:, 0], centres[:, 1])
    return np.stack([np.atleast_1d(rows), np.atleast_1d(cols)], axis=1).reshape(-1, 2)


def mask_patches(scan_path: Path, mask_path: Path, surface: str, patch: int, radius_px: float,
                 rng: np.random.Generator, max_per_scan: int = 10, plant: PlantSettings | bool | None = None) -> Patches:
    """The training patches of one scan and its mask, and with ``plant`` its planted patches
    (``True``: planted as ``surface`` plants them, :func:`.planted.plant_settings`; ``plant.patch``,
    ``plant.per_scan`` and ``plant.disc_nm`` are replaced by ``patch``, ``max_per_scan`` and
    ``radius_px``; see the module docstring)."""
    from stmwatch.drivers.sxm import read_sxm

    from ..preprocess import prepare

    scan = read_sxm(scan_path)
    mask = np.load(mask_path)
    if mask.shape != scan.shape:
        raise ValueError(f"{mask_path}: mask of shape {mask.shape}, but the scan {scan_path.name} is {scan.shape}")
    prepared = prepare(scan, surface)
    centres = mask_centres(mask, prepared)
    image = np.where(prepared.valid, prepared.image, 0.0).astype(np.float32)
    count = int(np.clip(round(image.shape[1] * image.shape[2] / patch**2), 2, max_per_scan))
    patches = cut_patches(image, centres, patch, count, radius_px, rng)
    if not plant:  # None or False
        return patches
    plant = plant_settings(surface) if plant is True else plant
    plant = dataclasses.replace(plant, patch=patch, per_scan=max_per_scan, disc_nm=radius_px * MODEL_NM_PER_PX)
    return join([patches, planted_patches(prepared, centres, rng, plant)])


def labelled_patches(labels_dir: str | Path, patch: int, radius_px: float, val_fraction: float = 0.1,
                     seed: int = 0, plant: PlantSettings | bool | None = None) -> tuple[Patches, Patches, list[str]]:
    """``(training patches, validation patches, surfaces)`` from ``labels_dir``; the last
    ``val_fraction`` of the scans (at least one, when there are two or more) are for validation,
    whose F1 is then against the auto-labels themselves (and the planted defects, with ``plant``)."""
    scans = labelled_scans(labels_dir)
    rng = np.random.default_rng(seed)
    train, val = split_validation([mask_patches(s, m, surf, patch, radius_px, rng, plant=plant)
                                   for s, m, surf in scans], val_fraction)
    log.info("%s: %d training, %d validation patches from %d scans", labels_dir, len(train), len(val), len(scans))
    return train, val, sorted({surf for _, _, surf in scans})
