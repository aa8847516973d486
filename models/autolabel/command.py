"""Labelling ``.sxm`` files for ``stmwatch autolabel`` (its command line is
``daemon/commands/autolabel.py``): finding the files, writing ``DIR/<stem>.mask.npy`` and the
preview, and the ``DIR/autolabel.json``'s entry that ``train unet --labels DIR`` reads."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "autolabel.json"


def read_manifest(folder: str | Path) -> dict | None:
    """``folder``'s ``autolabel.json``: ``{stem: entry}`` (each entry an object, see :func:`entry`),
    or None where there is none; ValueError naming the file for one that does not read as such."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not all(isinstance(e, dict) for e in manifest.values()):
            raise ValueError("not an object of objects")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not an autolabel manifest ({exc})") from None
    return manifest


def scan_files(inputs: list[str]) -> list[Path]:
    """The ``.sxm`` files named or inside the named folders (sorted), each once."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        files.extend(sorted(path.glob("*.sxm")) if path.is_dir() else [path])
    seen, out = set(), []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            out.append(f)
    return out


def parse_ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"expected numbers separated by commas, not {text!r}") from None


def entry(path: Path, surface: str, mask, k: int | None = None, result=None) -> dict:
    """The manifest entry of one labelled scan; with the cluster rule's ``result``, what it chose."""
    fields = {"scan": str(path.resolve()), "surface": surface, "defect_pixels": int(mask.sum())}
    if result is not None:
        fields.update(k=k, scales=list(result.scales), defect_clusters=list(result.defect_clusters),
                      double_tip=result.double_tip is not None)
    return fields


def cluster_label(path: Path, surface: str, features, *, k: int, scales, defect_clusters, seed: int = 0):
    """Read ``path`` and auto-label it with the cluster rule → ``(scan, AutoLabel)``."""
    from stmwatch.drivers.sxm import read_sxm

    from .label import autolabel

    scan = read_sxm(path)
    return scan, autolabel(scan, surface, features=features, k=k, scales=scales, defect_clusters=defect_clusters,
                           seed=seed)


def write_result(path: Path, out: Path, surface: str, k: int, result, mask, png: bool, title: str,
                 mask_title: str | None = None) -> dict:
    """Write ``out/<stem>.mask.npy`` (and the preview); returns the manifest entry."""
    import numpy as np

    from .preview import preview_png

    np.save(out / f"{path.stem}.mask.npy", mask)
    if png:
        preview_png(result, out / f"{path.stem}.autolabel.png", title=title, mask_title=mask_title)
    return entry(path, surface, mask, k, result)


def planted_model_mask(result, kept) -> "np.ndarray":
    """A model-grid mask for the preview: a 0.4 nm disc at each kept defect (larger than the
    written mask's 0.2 nm, to be seen on a shrunk panel)."""
    from ..train_unet import disc_target
    from .planted import defect_points

    points = defect_points(result.prepared, kept)
    return disc_target(result.model_mask.shape, points[:, 0], points[:, 1], 4.0) > 0
