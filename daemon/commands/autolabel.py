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

from stmwatch.models.autolabel import DEFAULT_K

log = logging.getLogger(__name__)

HELP = "defect masks from unlabelled scans: per-pixel features, k-means at several resolutions"
DESCRIPTION = __doc__.split("\n\n", 1)[1] + """
Features (--features): 'filters' (default, no weights: a multi-scale filter bank of both
channels), 'unet' (the encoder of the shipped UNet), 'unet:PATH' (of another stmwatch checkpoint)
or the path of any TorchScript file mapping (1, C, H, W) to (1, F, h, w). Defect clusters: chosen
automatically (rare, far from the lattice's cluster, compact defect-sized components) unless
--defect-clusters names them (numbers as in the preview PNG's legend, finest resolution).
See docs/autolabel.md."""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help=".sxm files or folders of them")
    parser.add_argument("--surface", required=True, help="surface the scans show: si001h | ge001 | tio2110")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the masks go (DIR/<stem>.mask.npy)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="clusters at each resolution (default %(default)s)")
    parser.add_argument("--scales", default="1,4", help="resolutions as shrink factors of the model scale "
                        "(0.1 nm/px), comma-separated; the finest gives the defects (default 1,4)")
    parser.add_argument("--defect-clusters", metavar="LIST", help="cluster numbers that are defects, e.g. 2,5 "
                        "(default: the automatic rule)")
    parser.add_argument("--features", default="filters", help="filters | unet | unet:PATH | a TorchScript file")
    parser.add_argument("--png", action="store_true", help="also write DIR/<stem>.autolabel.png previews")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")


def run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from stmwatch.models.autolabel.command import MANIFEST, label_file, parse_ints, scan_files
    from stmwatch.models.autolabel.features import make_features
    from stmwatch.models.surfaces import get_surface

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
