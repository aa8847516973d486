"""Labelling ``.sxm`` files for ``stmwatch autolabel`` (its command line is
``daemon/commands/autolabel.py``): finding the files, writing ``DIR/<stem>.mask.npy`` and the
preview, and the ``DIR/autolabel.json``'s entry that ``train unet --labels DIR`` reads."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "autolabel.json"


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


def label_file(path: Path, out: Path, surface: str, features, *, k: int, scales, defect_clusters, png: bool,
               seed: int = 0) -> dict:
    """Auto-label one file, write its mask (and preview); returns its manifest entry."""
    import numpy as np

    from stmwatch.drivers.sxm import read_sxm

    from .label import autolabel
    from .preview import preview_png

    scan = read_sxm(path)
    result = autolabel(scan, surface, features=features, k=k, scales=scales, defect_clusters=defect_clusters,
                       seed=seed)
    np.save(out / f"{path.stem}.mask.npy", result.mask)
    if png:
        preview_png(result, out / f"{path.stem}.autolabel.png",
                    title=f"{path.name}  {surface}  k={k}  defect clusters {list(result.defect_clusters)}")
    return {"scan": str(path.resolve()), "surface": surface, "k": k, "scales": list(result.scales),
            "defect_clusters": list(result.defect_clusters), "defect_pixels": int(result.mask.sum()),
            "double_tip": result.double_tip is not None}
