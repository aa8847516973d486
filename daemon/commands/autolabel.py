"""``stmwatch autolabel FILE_OR_DIR... --surface S --out DIR``: defect masks from unlabelled scans.

For each ``.sxm`` file (folders are searched for ``*.sxm``, not recursively) writes
``DIR/<stem>.mask.npy``: uint8, shape ``(rows, columns)`` of the scan as read, display frame (row
0 at the top), 1 = defect; with ``--png`` also ``DIR/<stem>.autolabel.png`` (scan | clusters |
mask). Two methods: ``clusters`` (per-pixel features, k-means, the defect clusters) and
``planted`` (the default): the clusters' defects first, then small UNets trained on these
scans with synthetic defects planted in them (two, from two seeds: ``DIR/detector/member<i>/best.pt``;
about 8 minutes each on 2 CPU cores) label every scan with their mean probability; ``--detector DIR/detector``
reuses trained ones (then, without ``--png``, no scan is
clustered unless the detector fails on it). ``DIR/autolabel.json`` records, per stem, the scan's path and what was chosen, so that
``stmwatch train unet --labels DIR`` finds the scans. A file that cannot be read or labelled is
one line on stderr and is skipped (exit code 2 at the end).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path

from stmwatch.models.autolabel import CONFIDENT, DEFAULT_K, MEMBERS

from ._args import first_shared_stem, surface_key

log = logging.getLogger(__name__)

ROUNDS, STEPS = 2, 50  # the detector training's defaults (docs/autolabel.md)

HELP = "defect masks from unlabelled scans: k-means clusters, then a detector trained on planted defects"
DESCRIPTION = __doc__.split("\n\n", 1)[1] + """
Features (--features): 'filters' (default, no weights: a multi-scale filter bank of both
channels), 'unet' (the encoder of the shipped UNet), 'unet:PATH' (of another stmwatch checkpoint)
or the path of any TorchScript file mapping (1, C, H, W) to (1, F, h, w). Defect clusters: chosen
automatically (rare, far from the lattice's cluster, compact defect-sized components) unless
--defect-clusters names them (numbers as in the preview PNG's legend, finest resolution).
See docs/autolabel.md."""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help=".sxm files or folders of them")
    parser.add_argument("--surface", required=True, type=surface_key, help="surface the scans show: si001h | ge001 | tio2110")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the masks go (DIR/<stem>.mask.npy)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="clusters at each resolution (default %(default)s)")
    parser.add_argument("--scales", default="1,4", help="resolutions as shrink factors of the model scale "
                        "(0.1 nm/px), comma-separated; the finest gives the defects (default 1,4)")
    parser.add_argument("--defect-clusters", metavar="LIST", help="cluster numbers that are defects, e.g. 2,5 "
                        "(default: the automatic rule)")
    parser.add_argument("--features", default="filters", help="filters | unet | unet:PATH | a TorchScript file")
    parser.add_argument("--png", action="store_true", help="also write DIR/<stem>.autolabel.png previews")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed, and the first detector's (default 0)")
    parser.add_argument("--method", choices=("planted", "clusters"), default="planted",
                        help="planted (default): the cluster rule's defects, then detectors trained on the scans "
                             "with planted synthetic defects label them all (minutes); clusters: the cluster rule alone")
    parser.add_argument("--detector", metavar="PATH", action="append", help="with --method planted: use trained "
                        "detectors instead of training (an earlier OUT/detector folder: all its members, averaged; "
                        "or a .pt file; give --detector again to average more); without --png no scan is clustered "
                        "(seconds per scan)")
    parser.add_argument("--detectors", type=int, default=MEMBERS, help="with --method planted: detectors trained "
                        "(from seeds --seed, --seed + 1, ...) and averaged (default %(default)s; 1 takes half the time; not with --detector)")
    parser.add_argument("--confident", type=float, default=CONFIDENT,
                        help="with --method planted: keep the detector's defects whose mean probability is at least "
                             "this (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="detector training rounds: each after the first "
                        "learns the previous detector's defects instead of the clusters' (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="detector training: epochs (default: the "
                        "surface's, 40; 20 on TiO2(110); models/autolabel/planted.py SURFACE_PLANTING)")
    parser.add_argument("--device", default="cpu", help="detector training: cpu | cuda (default cpu)")
    parser.add_argument("--steps", type=int, default=STEPS, help="detector training: steps per epoch (default %(default)s)")


def run(args) -> int:
    from stmwatch.models.autolabel.command import parse_ints, scan_files
    from stmwatch.models.autolabel.features import make_features
    from stmwatch.models.autolabel.planted import detector_paths
    try:  # (--surface is a known surface: argparse checked it)
        scales = parse_ints(args.scales)
        if not scales or min(scales) < 1:
            raise ValueError(f"--scales must be shrink factors of 1 or more, not {args.scales!r}")
        chosen = parse_ints(args.defect_clusters)
        try:
            features = make_features(args.features)
        except (FileNotFoundError, OSError, RuntimeError) as exc:  # a missing or unreadable weights file
            raise ValueError(f"--features {args.features}: {exc}") from None
        if min(args.k, args.rounds, args.steps, args.detectors) < 1 or (args.epochs is not None and args.epochs < 1):
            raise ValueError("--k, --rounds, --epochs, --steps and --detectors must be 1 or more")
        if not 0 < args.confident < 1:
            raise ValueError(f"--confident must be between 0 and 1, not {args.confident}")
        training = {"--detectors": args.detectors != MEMBERS, "--epochs": args.epochs is not None,
                    "--rounds": args.rounds != ROUNDS, "--steps": args.steps != STEPS, "--device": args.device != "cpu"}
        if args.detector and any(training.values()):
            raise ValueError(f"{', '.join(k for k, v in training.items() if v)}: detector training options, "
                             "not with --detector (its detectors are trained already)")
        detector_files = []  # resolved once: each --detector file, or a folder's members
        for path in args.detector or []:
            try:
                detector_files.extend(detector_paths(path))
            except FileNotFoundError as exc:
                raise ValueError(f"--detector: {exc}") from None
        if detector_files:
            check_detectors(detector_files, args.surface)
        elif args.method == "planted" and args.device.startswith("cuda"):
            check_cuda(args.device)
        files = scan_files(args.inputs)
        check_inputs(files, args.inputs, chosen)
        check_out(Path(args.out), args.surface)
    except (KeyError, ValueError) as exc:
        print(f"stmwatch autolabel: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labeller = Labeller(args, out, features, scales, chosen, detector_files)
    if args.method == "clusters":
        labeller.each(files, "autolabel", labeller.clusters_only)
    elif args.detector and not args.png:  # a trained detector, no preview: no clustering unless it fails
        labeller.planted(files, [], labeller.clusters_only, labeller.detector_only)
    else:
        labelled = labeller.each(files, "clusters", labeller.clusters_first)
        if labelled:
            labeller.planted(labelled, labelled, labeller.clusters_written, labeller.with_detector)
    labeller.finish()
    done = len(files) - len(labeller.failed)
    print(f"{done} of {len(files)} scans labelled into {out}" + (f"; {len(labeller.failed)} skipped" if labeller.failed else "")
          + ("; the cluster rule's masks, the detector having failed" if labeller.detector_failed else ""),
          file=sys.stderr)
    return 2 if labeller.failed or labeller.detector_failed else 0


def check_inputs(files: list[Path], inputs: list[str], chosen: list[int] | None) -> None:
    """Refuse, before any work: no ``.sxm`` file found; two scans of one name (their masks,
    ``OUT/<stem>.mask.npy``, would overwrite each other); ``--defect-clusters`` for more than one
    scan (k-means runs on each scan alone, so its cluster numbers mean something else in each)."""
    if not files:
        raise ValueError(f"no .sxm files in {' '.join(inputs)}")
    if twins := first_shared_stem(files):
        raise ValueError(f"{twins[0]} and {twins[1]} have one name, and their masks would overwrite "
                         "each other in --out: label them into separate folders")
    if chosen is not None and len(files) > 1:
        raise ValueError(f"--defect-clusters names one scan's clusters (k-means runs on each scan alone), "
                         f"but {len(files)} scans were given: label the scan whose preview you read alone")


def check_out(out: Path, surface: str) -> None:
    """Refuse an ``--out`` whose manifest labels another surface: ``train unet --labels`` would
    train one model on both."""
    from stmwatch.models.autolabel.command import read_manifest

    manifest = read_manifest(out)
    if manifest is None:
        return
    others = {entry.get("surface") for entry in manifest.values()} - {surface}
    if others:
        raise ValueError(f"{out} holds labels of {', '.join(sorted(map(str, others)))}, not {surface}: "
                         "give another --out")


def check_detectors(files: list[Path], surface: str) -> None:
    """Load each ``--detector`` file once, before any work: one that is no stmwatch checkpoint, or
    was trained for another surface, is named."""
    import torch

    for path in files:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            trained_for = checkpoint["meta"].get("surfaces") or []
        except Exception as exc:  # a pickle, a truncated file, another program's weights
            raise ValueError(f"--detector {path}: not a stmwatch checkpoint ({type(exc).__name__})") from None
        if trained_for and surface not in trained_for:
            raise ValueError(f"--detector {path}: trained for {', '.join(trained_for)}, not {surface}")


def check_cuda(device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch has no CUDA device (use --device cpu)")


class Labeller:
    """The command's state: the output folder, its manifest, the files that failed."""

    def __init__(self, args, out: Path, features, scales, chosen, detector_files: list[Path]):
        from stmwatch.models.autolabel.command import MANIFEST, read_manifest

        self.args, self.out, self.features, self.scales, self.chosen = args, out, features, scales, chosen
        self.detector_paths = detector_files  # --detector's files; those trained here, once trained
        self.manifest_path = out / MANIFEST
        self.manifest = read_manifest(out) or {}
        self.failed: set[str] = set()
        self.detector_failed = False

    def each(self, items: list, stage: str, work) -> list:
        """``work(item)`` for each item (a path, or a ``(path, ...)`` tuple) under a progress bar;
        a failure is one line on stderr and the item is dropped. Returns what ``work`` returned."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.text import Text

        from stmwatch.drivers.sxm import naming_the_file

        columns = [TextColumn(stage), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[name]}"),
                   TimeRemainingColumn()]
        results = []
        with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
            task = bar.add_task(stage, total=len(items), name="")
            for item in items:
                path = item[0] if isinstance(item, tuple) else item
                bar.update(task, name=path.name)
                try:
                    if (self.out / f"{path.stem}.truth.json").exists():
                        raise ValueError(f"{self.out} holds the simulator's truth for this scan; "
                                         "writing its .mask.npy there would replace the truth mask")
                    results.append(work(item))
                    self.finish()  # after each scan: an interrupted run leaves a manifest of what it wrote
                except Exception as exc:  # any bad file: one line, skipped
                    self.failed.add(str(path))
                    # a Text: a file name like 'a[1].sxm' or ':key:' is printed as it is, not as markup
                    bar.console.print(Text.assemble(("error", "red"), f": {naming_the_file(path, exc)}"),
                                      highlight=False, soft_wrap=True)
                    log.debug("%s failed", path, exc_info=True)
                bar.advance(task)
        return results

    def _cluster(self, path: Path):
        from stmwatch.models.autolabel.command import cluster_label

        return cluster_label(path, self.args.surface, self.features, k=self.args.k, scales=self.scales,
                             defect_clusters=self.chosen, seed=self.args.seed)

    def clusters_only(self, path: Path) -> None:
        self.clusters_written(self.clusters_first(path))

    def clusters_written(self, item: tuple) -> None:
        """Write the cluster rule's mask of ``(path, AutoLabel)``."""
        from stmwatch.models.autolabel.command import write_result

        path, result = item
        self.manifest[path.stem] = {**write_result(
            path, self.out, self.args.surface, self.args.k, result, result.mask, self.args.png,
            title=f"{path.name}  {self.args.surface}  k={self.args.k}  defect clusters {list(result.defect_clusters)}"),
            "method": "clusters"}

    def clusters_first(self, path: Path) -> tuple:
        """``(path, AutoLabel)``. The scan is not kept (it is read again when the detector needs
        it), nor the cluster maps unless for the preview; the prepared model image is."""
        _, result = self._cluster(path)
        if not self.args.png:
            result = dataclasses.replace(result, clusters=[], centres=[])
        return path, result

    def detector(self, labelled: list):
        """The planted-defect detectors' ``segment``: ``--detector``, or ``--detectors`` trained now on
        the scans in ``--rounds`` rounds each (``OUT/detector/``;
        :func:`~stmwatch.models.autolabel.planted.train_members`)."""
        from rich.console import Console

        from stmwatch.drivers.sxm import read_sxm
        from stmwatch.models.autolabel.evaluate import mask_centroids
        from stmwatch.models.autolabel.planted import detector_segmenter, plant_settings, train_members

        if self.args.detector:
            return detector_segmenter(self.detector_paths, self.args.surface, self.args.confident)
        settings = plant_settings(self.args.surface, steps=self.args.steps, seed=self.args.seed,
                                  **({} if self.args.epochs is None else {"epochs": self.args.epochs}))
        scans = [(functools.partial(read_sxm, path), result.prepared, mask_centroids(result.model_mask))
                 for path, result in labelled]
        console = Console(stderr=True)
        self.detector_paths, segment = train_members(scans, self.out / "detector", self.args.surface, settings,
                                                     members=self.args.detectors, rounds=self.args.rounds,
                                                     confident=self.args.confident, device=self.args.device,
                                                     announce=console.print)
        return segment

    def planted(self, items: list, train_on: list, fallback, work) -> None:
        """The detector (``--detector``, or trained on ``train_on``) labels each item, ``work(item,
        segment)``; if it cannot be loaded or trained, ``fallback(item)`` (the cluster rule) does,
        after one line."""
        try:
            segment = self.detector(train_on)
        except Exception as exc:  # e.g. a detector file that is no stmwatch checkpoint
            print(f"stmwatch autolabel: the planted-defect detector failed ({exc}); "
                  "writing the cluster rule's masks instead", file=sys.stderr)
            log.debug("detector failed", exc_info=True)
            self.detector_failed = True
            self.each(items, "clusters", fallback)
            return
        self.each(items, "detector", lambda item: work(item, segment))

    def _detect(self, path: Path, scan, segment, fallback) -> tuple | None:
        """``(mask, kept defects, manifest fields)`` of ``scan`` from the detector; if the detector
        fails on it, ``fallback()`` writes the cluster rule's mask instead, with one line, and None."""
        from stmwatch.models.autolabel.planted import detector_mask

        try:
            mask, kept = detector_mask(scan, segment, self.args.confident)
        except Exception as exc:  # this scan keeps its cluster mask, with one line
            self.detector_failed = True
            print(f"{path}: the detector failed ({exc}); the cluster rule's mask is written instead", file=sys.stderr)
            fallback()
            return None
        double_tip = getattr(getattr(segment, "__self__", None), "last_double_tip", None)
        fields = {"method": "planted", "detector": [str(path.resolve()) for path in self.detector_paths], "defects": len(kept),
                  "double_tip": double_tip is not None}
        return mask, kept, fields

    def with_detector(self, item: tuple, segment) -> None:
        """Write the detector's mask of ``(path, AutoLabel)`` (and the preview); the cluster rule's
        if the scan can no longer be read."""
        from stmwatch.drivers.sxm import read_sxm
        from stmwatch.models.autolabel.command import planted_model_mask, write_result

        path, result = item
        try:
            scan = read_sxm(path)
        except Exception as exc:  # changed or gone since it was clustered: its cluster mask, one line
            print(f"{path}: cannot be read again ({exc}); the cluster rule's mask is written", file=sys.stderr)
            self.clusters_written(item)
            return
        found = self._detect(path, scan, segment, fallback=lambda: self.clusters_written(item))
        if found is None:
            return
        mask, kept, fields = found
        result = dataclasses.replace(result, model_mask=planted_model_mask(result, kept), mask=mask)
        self.manifest[path.stem] = {**write_result(
            path, self.out, self.args.surface, self.args.k, result, mask, self.args.png,
            title=f"{path.name}  {self.args.surface}  planted-defect detector  {len(kept)} defects",
            mask_title=f"detector's defects (mean probability >= {self.args.confident})"), **fields}

    def detector_only(self, path: Path, segment) -> None:
        """Read ``path`` and write the detector's mask, without clustering (``--detector``, no
        ``--png``); the cluster rule runs only if the detector fails on it."""
        import numpy as np

        from stmwatch.drivers.sxm import read_sxm
        from stmwatch.models.autolabel.command import entry

        scan = read_sxm(path)
        found = self._detect(path, scan, segment, fallback=lambda: self.clusters_only(path))
        if found is None:
            return
        mask, _, fields = found
        np.save(self.out / f"{path.stem}.mask.npy", mask)
        self.manifest[path.stem] = {**entry(path, self.args.surface, mask), **fields}

    def finish(self) -> None:
        """Write the manifest whole (a temporary file renamed over it)."""
        partial = self.manifest_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.manifest, indent=1))
        partial.replace(self.manifest_path)
