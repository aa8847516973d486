"""``stmwatch autolabel FILE_OR_DIR... --surface S --out DIR``: defect masks from unlabelled scans.

For each ``.sxm`` file (folders are searched for ``*.sxm``, not recursively) writes
``DIR/<stem>.mask.npy``: uint8, shape ``(rows, columns)`` of the scan as read, display frame (row
0 at the top), 1 = defect; with ``--png`` also ``DIR/<stem>.autolabel.png`` (scan | clusters |
mask). ``DIR/autolabel.json`` records, per stem, the scan's path and what was chosen, so that
``stmwatch train unet --labels DIR`` finds the scans. A file that cannot be read or labelled is
one line on stderr and is skipped (exit code 2 at the end).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

HELP = "defect masks from unlabelled scans: per-pixel features, k-means at several resolutions"
DESCRIPTION = __doc__.split("\n\n", 1)[1] + """
Features (--features): 'filters' (default, no weights: a multi-scale filter bank of both
channels), 'unet' (the encoder of the shipped UNet), 'unet:PATH' (of another stmwatch checkpoint)
or the path of any TorchScript file mapping (1, C, H, W) to (1, F, h, w). Defect clusters: chosen
automatically (rare, far from the lattice's cluster, compact defect-sized components) unless
--defect-clusters names them (numbers as in the preview PNG's legend, finest resolution).
See docs/autolabel.md."""
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


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help=".sxm files or folders of them")
    parser.add_argument("--surface", required=True, help="surface the scans show: si001h | ge001 | tio2110")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the masks go (DIR/<stem>.mask.npy)")
    parser.add_argument("--k", type=int, default=8, help="clusters at each resolution (default 8)")
    parser.add_argument("--scales", default="1,4", help="resolutions as shrink factors of the model scale "
                        "(0.1 nm/px), comma-separated; the finest gives the defects (default 1,4)")
    parser.add_argument("--defect-clusters", metavar="LIST", help="cluster numbers that are defects, e.g. 2,5 "
                        "(default: the automatic rule)")
    parser.add_argument("--features", default="filters", help="filters | unet | unet:PATH | a TorchScript file")
    parser.add_argument("--png", action="store_true", help="also write DIR/<stem>.autolabel.png previews")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")


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


def run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..surfaces import get_surface
    from .features import make_features

    try:
        get_surface(args.surface)
        scales = parse_ints(args.scales)
        chosen = parse_ints(args.defect_clusters)
        features = make_features(args.features)
    except (KeyError, ValueError) as exc:
        print(f"stmwatch autolabel: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    files, failed = scan_files(args.inputs), 0
    columns = [TextColumn("autolabel"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[name]}"),
               TimeRemainingColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("files", total=len(files), name="")
        for path in files:
            bar.update(task, name=path.name)
            try:
                if (out / f"{path.stem}.truth.json").exists():
                    raise ValueError(f"{out} holds the simulator's truth for this scan; "
                                     "writing its .mask.npy there would replace the truth mask")
                manifest[path.stem] = label_file(path, out, args.surface, features, k=args.k, scales=scales,
                                                 defect_clusters=chosen, png=args.png, seed=args.seed)
            except Exception as exc:  # any bad file: one line, skipped
                failed += 1
                message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                bar.console.print(f"[red]error[/red]: {message}", highlight=False, soft_wrap=True)
                log.debug("%s failed", path, exc_info=True)
            bar.advance(task)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    done = len(files) - failed
    print(f"{done} of {len(files)} scans labelled into {out}" + (f"; {failed} skipped" if failed else ""),
          file=sys.stderr)
    return 2 if failed else 0
