"""Adapt the models to one microscope from its unlabelled scans (``stmwatch adapt``).

1. **Labels** come from a pluggable :class:`LabelSource`: by default the UNet's output where its
   four mirror passes agree (:class:`UNetFlipAgreementLabels`: confident components seen by
   every pass are defects, only pixels every pass calls background are background, the rest is
   left out of the loss); ``"unet"`` is the plain confident output (:class:`UNetConfidentLabels`).
   A folder of masks that ``stmwatch autolabel`` wrote for the scans is a source too
   (:class:`MaskLabels`; one round), for a microscope on which the UNet finds little.
2. **The UNet** is fine-tuned on patches of the lab's scans with those labels, with the training's
   own augmentation and noise (:func:`stmwatch.models.train_unet.augment`), its BatchNorm
   statistics following the lab's images, in ``rounds`` of self-training: after each round the
   fine-tuned UNet (a frozen copy) makes the labels of the next.
3. **The few-shot embedding**: optionally its BatchNorm statistics are re-estimated on the lab's
   defect crops (AdaBN, ``AdaptSettings.adabn``, off: it hurt on scan crops, docs/adapt.md) and it is
   fine-tuned on pseudo-classes (``embedding_steps``, off); the unknown distance is re-calibrated
   there (same-cluster pairs of crops), and the crops are stored as a pool for *transductive
   prototype refinement*: whatever support set the operator clicks later, each prototype moves
   towards the lab crops and the scan's own defects it attracts (soft k-means,
   :class:`~stmwatch.models.fewshot.transductive.TransductiveClassifier`). Each pool crop's scan
   bias is stored with it, so that crops of the other polarity than a scan's are translated to it
   by the classifier's polarity maps, which travel in the bundle unless the embedding was changed.
4. A part of the given scans is **held back**; the card reports before/after figures on it: with
   truth files beside the scans (simulated data) detection F1 and one-click label accuracy,
   else label-free figures (defects per scan, mean classifier confidence). The held-back scans
   are never trained on, and nothing is selected on them.

Everything is written as a model bundle (:mod:`.bundle`). The settings are fixed in
:class:`AdaptSettings` (chosen before measuring on the foreign style; not tuned on it).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from stmwatch.drivers.sxm import naming_the_file, read_sxm

from .autolabel.kmeans import kmeans
from .fewshot.transductive import STEPS as TRANSDUCTIVE_STEPS
from .preprocess import Prepared, prepare
from .segment import crops_at, find_components

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AdaptSettings:
    held_back: float = 0.25  # share of the scans (the last ones by name) kept for the card
    confident: float = 0.6  # a pseudo-label: a component whose mean probability is above this
    unsure_low: float = 0.1  # pixels above this but not in a confident component are left out of the loss
    disc_nm: float = 0.4  # target disc radius (as in training)
    patch: int = 96  # model pixels
    steps: int = 240  # UNet optimiser steps
    batch: int = 8
    lr: float = 3e-4
    noise: float = 0.5  # share of patches given extra experimental noise
    clusters: int = 8  # k-means clusters of lab crops for the unknown-distance calibration
    refine_steps: int = TRANSDUCTIVE_STEPS  # soft k-means steps of the transductive refinement (each scan's crops + the pool)
    embedding_steps: int = 0  # episodic fine-tuning of the embedding on the lab's crops (fewshot/pseudo.py)
    adabn: bool = False  # re-estimate the embedding's BatchNorm statistics on the lab's crops (docs/adapt.md)
    agree: int = 4  # "unet-flips" labels: a defect only where this many of the 4 mirror passes see it
    rounds: int = 2  # self-training: the labels are made again by the fine-tuned UNet after each round
    seed: int = 0


# ---- label sources ---------------------------------------------------------------------------------
@dataclasses.dataclass
class PseudoLabels:
    """Defect centres ``(k, 2)`` (model pixels, row/col) and an ``(H, W)`` bool mask of pixels to
    leave out of the loss (unsure); both on the prepared scan's model grid."""

    centres: np.ndarray
    unsure: np.ndarray


class LabelSource(Protocol):
    name: str

    def labels(self, path: Path, prepared: Prepared) -> PseudoLabels:
        """The labels of the scan read from ``path`` (prepared as for the models)."""


class UNetConfidentLabels:
    """The UNet's confident output as labels (see the module docstring)."""

    name = "unet-confident"

    def __init__(self, segmenter, confident: float, unsure_low: float, min_area_px: int = 12):
        self.segmenter, self.confident, self.unsure_low, self.min_area = segmenter, confident, unsure_low, min_area_px

    def labels(self, path: Path, prepared: Prepared) -> PseudoLabels:
        prob = self.segmenter.probability(prepared)
        return self.confident_components(prob, prob > self.unsure_low, prepared.valid)

    def confident_components(self, prob: np.ndarray, maybe: np.ndarray, valid: np.ndarray,
                             accept: Callable[[np.ndarray], bool] = lambda inside: True) -> PseudoLabels:
        """The components of ``prob`` above the segmenter's threshold whose mean probability is at
        least ``confident`` (and which ``accept``, given the component's pixel mask) are defects;
        the pixels of ``maybe`` outside them, and those not ``valid``, are left out of the loss."""
        components, label_image = find_components(prob, self.segmenter.threshold, self.min_area, valid)
        ids = np.unique(label_image[label_image > 0])  # the components' label ids, in their order
        keep = [k for k, (c, lab) in enumerate(zip(components, ids))
                if c.score >= self.confident and accept(label_image == lab)]
        centres = np.array([(components[k].row, components[k].col) for k in keep], dtype=float).reshape(-1, 2)
        unsure = maybe & ~np.isin(label_image, ids[keep])
        return PseudoLabels(centres, unsure | ~valid)


class UNetFlipAgreementLabels(UNetConfidentLabels):
    """The UNet's output where its four mirror passes agree: a component of the mean probability
    is a defect when its mean probability is above ``confident`` *and* at least ``agree`` of the
    passes reach the threshold inside it; a pixel is background only where *every* pass is below
    ``unsure_low``; everything else is left out of the loss. So a defect the network half sees is
    never taught as background (the network does not learn its own misses back), and one that a
    single pass makes up is not taught as a defect."""

    name = "unet-flips"

    def __init__(self, segmenter, confident: float, unsure_low: float, min_area_px: int = 12, agree: int = 4):
        super().__init__(segmenter, confident, unsure_low, min_area_px)
        self.agree = agree

    def labels(self, path: Path, prepared: Prepared) -> PseudoLabels:
        from .unet import flip_predictions

        seg = self.segmenter
        passes = np.stack(flip_predictions(prepared.image, seg.backend, 4, seg.tile_px, seg.tile_overlap_px,
                                           seg.batch_size))
        passes = np.where(prepared.valid, passes, 0.0)

        def seen_by_enough(inside: np.ndarray) -> bool:
            return int((passes[:, inside].max(axis=1) >= seg.threshold).sum()) >= self.agree

        return self.confident_components(passes.mean(0), passes.max(0) >= self.unsure_low, prepared.valid,
                                         seen_by_enough)


def with_model(segmenter, model):
    """A copy of ``segmenter`` that runs ``model`` (torch, eval mode): the teacher of the next round."""
    from .backends import TorchBackend

    teacher = copy.copy(segmenter)
    teacher.model, teacher.backend = model.eval(), TorchBackend(model.eval())
    return teacher


class MaskLabels:
    """Labels from the masks that ``stmwatch autolabel`` wrote for the scans (``DIR/<stem>.mask.npy``:
    uint8, the scan's ``(rows, columns)``, display frame, 1 = defect), for a microscope on which the
    UNet finds little: the auto-labeller learns from the lab's own scans (docs/autolabel.md). Each
    component of a mask is a defect at its centroid, on the model grid (as ``train unet --labels``
    reads them). Auto-labels miss some defects, so a pixel outside them where the starting UNet's
    probability passes ``unsure_low`` is left out of the loss, not taught as background. The masks
    do not change between rounds: one round of fine-tuning. Measured once (docs/adapt.md, stop 31),
    on a simulated microscope where the auto-labels found a third of the defects or fewer, it lost
    detection F1 against the UNet's own labels."""

    name = "autolabel-masks"

    def __init__(self, folder: Path, unet, unsure_low: float):
        self.folder, self.unet, self.unsure_low = Path(folder), unet, unsure_low

    def mask_path(self, scan_path: Path) -> Path:
        return self.folder / f"{scan_path.stem}.mask.npy"

    def check(self, paths: list[Path], scans: list, surface: str) -> None:
        """A clear error, before any work, for each scan without its mask or with one of another shape,
        and, where the folder's ``autolabel.json`` says what each mask was made from, for a mask made
        from another file of the same name or for another surface."""
        problems = [f"{path.name}: no mask {self.mask_path(path)}" for path in paths if not self.mask_path(path).is_file()]
        problems += self._manifest_problems(paths, surface)
        if not problems:
            problems = [f"{path.name}: mask of shape {shape}, the scan is {scan.shape}" for path, scan in zip(paths, scans)
                        if (shape := np.load(self.mask_path(path), mmap_mode="r").shape) != scan.shape]
        if problems:
            more = f"; and {len(problems) - 3} more of {len(paths)} scans" if len(problems) > 3 else ""
            raise ValueError(f"auto-label masks {self.folder} (stmwatch autolabel --out): " + "; ".join(problems[:3]) + more)

    def _manifest_problems(self, paths: list[Path], surface: str) -> list[str]:
        import filecmp

        from .autolabel.command import read_manifest

        manifest = read_manifest(self.folder)
        if manifest is None:
            return []  # masks from elsewhere: matched by name alone
        problems = []
        for path in paths:
            made_from = manifest.get(path.stem)
            if made_from is None:
                continue
            if made_from.get("surface") != surface:
                problems.append(f"{path.name}: its mask was made for {made_from.get('surface')}, not {surface}")
            source = Path(made_from.get("scan", ""))
            if source.is_file() and source.resolve() != path.resolve() and not filecmp.cmp(source, path, shallow=False):
                problems.append(f"{path.name}: its mask was made from another file, {source}")
        return problems

    def labels(self, path: Path, prepared: Prepared) -> PseudoLabels:
        from .autolabel.training import mask_centres

        maybe = self.unet.probability(prepared) > self.unsure_low
        return PseudoLabels(mask_centres(np.load(self.mask_path(path)), prepared), maybe | ~prepared.valid)


LABEL_SOURCES: dict[str, Callable[..., LabelSource]] = {"unet": UNetConfidentLabels, "unet-flips": UNetFlipAgreementLabels}
# A folder of `stmwatch autolabel` masks is a source too (MaskLabels; adapt's label_source is then its path).


# ---- the UNet ----------------------------------------------------------------------------------------
def _patches(image: np.ndarray, target: np.ndarray, patch: int, count: int, rng) -> tuple[np.ndarray, np.ndarray]:
    c, h, w = image.shape
    ph, pw = max(h, patch), max(w, patch)
    image = np.pad(image, ((0, 0), (0, ph - h), (0, pw - w)))
    target = np.pad(target, ((0, ph - h), (0, pw - w)), constant_values=-1.0)
    xs, ys = [], []
    for _ in range(count):
        r0, c0 = int(rng.integers(0, ph - patch + 1)), int(rng.integers(0, pw - patch + 1))
        xs.append(image[:, r0:r0 + patch, c0:c0 + patch])
        ys.append(target[r0:r0 + patch, c0:c0 + patch])
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def label_patches(paths: list[Path], prepared_scans: list[Prepared], source: LabelSource, radius: float,
                  settings: AdaptSettings, rng, progress,
                  scan_bias: list[float | None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Patches ``(N, C, P, P)`` of the scans with targets ``(N, P, P)`` in {-1 left out, 0, 1} from
    ``source``'s labels (discs of ``radius`` model pixels), the crops at the labelled defects, each
    crop's scan bias (V, from ``scan_bias``, one per scan; NaN unknown), and the number of defect pixels."""
    from .train_unet import disc_target

    xs, ys, crops, biases = [], [], [], []
    for i, (path, prepared) in enumerate(zip(paths, prepared_scans)):
        labels = source.labels(path, prepared)
        image = np.where(prepared.valid, prepared.image, 0.0).astype(np.float32)
        target = disc_target(image.shape[1:], labels.centres[:, 0], labels.centres[:, 1], radius)
        target = np.where(labels.unsure & (target == 0), -1.0, target).astype(np.float32)
        count = int(np.clip(round(2 * image.shape[1] * image.shape[2] / settings.patch ** 2), 4, 24))
        x, y = _patches(image, target, settings.patch, count, rng)
        xs.append(x)
        ys.append(y)
        if len(labels.centres):
            crops.append(crops_at(prepared.image, labels.centres[:, 0], labels.centres[:, 1]))
            bias = scan_bias[i] if scan_bias is not None and scan_bias[i] is not None else np.nan
            biases.append(np.full(len(labels.centres), bias, np.float32))
        progress(i + 1, len(paths))
    lab_crops = np.concatenate(crops) if crops else np.zeros((0, 2, 32, 32), np.float32)
    lab_bias = np.concatenate(biases) if biases else np.zeros(0, np.float32)
    return np.concatenate(xs), np.concatenate(ys), lab_crops, lab_bias, int(sum((t == 1).sum() for t in ys))


def masked_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (as in training) over the pixels whose target is 0 or 1; -1 = left out."""
    logits = logits[:, 0]
    weight = (target >= 0).float()
    t = target.clamp(min=0)
    bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * weight).sum() / weight.sum().clamp(min=1)
    prob = torch.sigmoid(logits) * weight
    dice = 1 - (2 * (prob * t).sum() + 1) / (prob.sum() + (t * weight).sum() + 1)
    return bce + dice


def finetune_unet(model, images: np.ndarray, targets: np.ndarray, settings: AdaptSettings, progress=None):
    """Fine-tune ``model`` in place on patches ``images`` ``(N, C, P, P)`` with targets ``(N, P, P)``
    in {-1, 0, 1}, with the training's flips and noise; returns the mean loss of the last 20 steps."""
    from .train_unet import augment, learning_rate

    rng = np.random.default_rng([settings.seed, 77])
    torch.manual_seed(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    model.train()
    losses = []
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, settings.steps, settings.lr)
        idx = rng.integers(0, len(images), settings.batch)
        x, y = augment(images[idx], targets[idx], rng, settings.noise)
        loss = masked_loss(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress()
    model.eval()
    return float(np.mean(losses[-20:])) if losses else float("nan")


# ---- the few-shot embedding ----------------------------------------------------------------------------
@torch.no_grad()
def adapt_batchnorm(backbone: torch.nn.Module, crops: np.ndarray, batch: int = 256) -> None:
    """AdaBN: re-estimate every BatchNorm's running mean and variance on ``crops`` (and their
    line-preserving flips), the weights untouched."""
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or len(crops) < 2:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    backbone.train()
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))
    for view in (x, x.flip(-1), x.flip(-2), x.flip(-2, -1)):
        for i in range(0, len(view), batch):
            if len(view[i:i + batch]) > 1:
                backbone(view[i:i + batch])
    for m in norms:
        m.momentum = 0.1
    backbone.eval()


@torch.no_grad()
def unknown_distance(net, crops: np.ndarray, clusters: int, seed: int, percentile: float = 99.0) -> float:
    """The ``percentile`` of the squared embedding distance between two crops of the same k-means
    cluster of lab crops: how far a one-shot prototype's own class reaches on this microscope."""
    emb = net.embed(torch.from_numpy(crops)).numpy()
    labels = kmeans(emb, clusters, seed=seed)[1]
    d = []
    for j in np.unique(labels):
        e = emb[labels == j]
        if len(e) > 1:
            dd = ((e[:, None] - e[None]) ** 2).sum(-1)
            d.append(dd[np.triu_indices(len(e), 1)])
    return float(np.percentile(np.concatenate(d), percentile)) if d else float("inf")


# ---- the whole run -------------------------------------------------------------------------------------
def split_scans(paths: list[Path], held_back: float) -> tuple[list[Path], list[Path]]:
    """(train, held back): the last ``held_back`` share by name (at least 1 when there are 4+)."""
    paths = sorted(paths)
    n_held = int(round(held_back * len(paths))) if len(paths) >= 4 else 0
    n_held = max(n_held, 1) if len(paths) >= 4 else 0
    return paths[:len(paths) - n_held], paths[len(paths) - n_held:]


def adapt(scan_dir: str | Path, surface: str, out: str | Path, config, *, support: str | Path | None = None,
          label_source: str = "unet-flips", settings: AdaptSettings | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Adapt the models of ``config`` (``models``, ``preprocess``) to the ``.sxm`` scans in
    ``scan_dir`` and write the bundle ``out``. ``progress(stage, done, total)`` is called as work
    is done. Returns the card's figures."""
    from .bundle import write_bundle
    from .fewshot.classifier import WEIGHTS as SHIPPED_CLASSIFIER
    from .fewshot.training import load as load_fewshot
    from .fewshot.training import save as save_fewshot
    from .load import load_segmenter, with_bundle
    from .surfaces import get_surface
    from .unet import load_checkpoint, save_checkpoint

    settings = settings or AdaptSettings()
    report = progress or (lambda stage, done, total: None)
    t_start = time.perf_counter()
    surf = get_surface(surface)
    models = config.models
    if models.bundle:  # adapt further from a bundle
        models, _ = with_bundle(models, surface)
    check_out_folder(Path(out))
    if support is not None:
        check_support_folder(Path(support).expanduser())
    scan_of, skipped = readable_scans(sorted(Path(scan_dir).glob("*.sxm")))
    paths = list(scan_of)
    if len(paths) < 2:
        raise ValueError(f"{scan_dir}: adapt needs at least 2 .sxm files that read, found {len(paths)}")
    train_paths, held = split_scans(paths, settings.held_back)
    segmenter = load_segmenter(dataclasses.replace(models, backend="torch"), surf, config.preprocess, "torch")
    if label_source in LABEL_SOURCES:
        source = LABEL_SOURCES[label_source](segmenter, settings.confident, settings.unsure_low, models.min_area_px)
    elif (mask_folder := Path(label_source).expanduser()).is_dir():
        source = MaskLabels(mask_folder, segmenter, settings.unsure_low)
    else:
        raise ValueError(f"unknown label source {label_source!r}; known: {sorted(LABEL_SOURCES)}, "
                         f"or a folder of `stmwatch autolabel` masks")
    if hasattr(source, "agree"):
        source.agree = settings.agree

    # 1. labels and crops
    radius = settings.disc_nm / surf.nm_per_px
    rng = np.random.default_rng([settings.seed, 5])
    train_scans = [scan_of[path] for path in train_paths]
    if isinstance(source, MaskLabels):
        source.check(train_paths, train_scans, surface)
    prepared_scans = [prepare(scan, surf, config.preprocess) for scan in train_scans]
    images, targets, lab_crops, lab_bias, n_labels = label_patches(
        train_paths, prepared_scans, source, radius, settings, rng, lambda d, t: report("labels", d, t),
        [scan.bias_v for scan in train_scans])
    log.info("%d patches, %d confident defects (crops)", len(images), len(lab_crops))

    with tempfile.TemporaryDirectory(prefix="adapt-") as tmp:
        tmp = Path(tmp)
        # 2. the UNet: rounds of self-training, each round's labels made by the UNet of the last
        unet_path = Path(models.segmenter_weights).expanduser() if models.segmenter_weights else None
        from .load import shipped_weights

        model, checkpoint = load_checkpoint(unet_path or shipped_weights(surface))
        done = [0]

        def step():
            done[0] += 1
            report("unet", done[0], settings.steps)

        rounds = max(1, settings.rounds) if hasattr(source, "segmenter") else 1
        per_round = [settings.steps // rounds + (r < settings.steps % rounds) for r in range(rounds)]
        for r, steps in enumerate(per_round):
            if r:
                source.segmenter = with_model(source.segmenter, copy.deepcopy(model))
                images, targets, _, _, n_labels = label_patches(train_paths, prepared_scans, source, radius, settings,
                                                             rng, lambda d, t: report("labels", d, t))
            final_loss = finetune_unet(model, images, targets,
                                       dataclasses.replace(settings, steps=steps, seed=settings.seed + r), step)
        meta = {**checkpoint.get("meta", {}), "name": "unet-adapted",
                "adapted": {"scans": [p.name for p in train_paths], "label_source": source.name,
                            "steps": settings.steps, "rounds": rounds, "final_loss": round(final_loss, 4)}}
        save_checkpoint(model, tmp / "unet.pt", meta=meta)

        # 3. the few-shot embedding
        fs_path = Path(models.classifier_weights).expanduser() if models.classifier_weights else SHIPPED_CLASSIFIER
        net, fs_config, fs_meta = load_fewshot(fs_path)
        report("embedding", 0, 1)
        embedding_changed = False  # fine-tuned or its BatchNorm re-estimated on the lab's crops
        if len(lab_crops) >= 8:
            from .fewshot.crops import normalise_crops

            seen = normalise_crops(lab_crops) if fs_config.crop_norm == "per_crop" else lab_crops  # as the net sees them
            if settings.embedding_steps > 0:
                from .fewshot.pseudo import PseudoSettings, finetune_on_lab_crops

                tuned = finetune_on_lab_crops(net, seen, PseudoSettings(steps=settings.embedding_steps, seed=settings.seed),
                                              lambda d, t: report("embedding", d, t + 1))
                fs_meta = {**fs_meta, "lab_finetune": tuned}
            if settings.adabn:
                adapt_batchnorm(net.backbone, seen)
            embedding_changed = settings.embedding_steps > 0 or settings.adabn
            net.tta = fs_meta.get("tta", "none")
            u = unknown_distance(net, seen, settings.clusters, settings.seed)
        else:
            u = fs_meta.get("unknown_distance", float("inf"))
        np.save(tmp / "lab_crops.npy", lab_crops.astype(np.float32))
        np.save(tmp / "lab_crops_bias.npy", lab_bias.astype(np.float32))  # each crop's scan bias (V; NaN unknown)
        extra = {"lab_crops.npy": tmp / "lab_crops.npy", "lab_crops_bias.npy": tmp / "lab_crops_bias.npy"}
        if fs_meta.get("gate"):  # the classifier's unknown gate travels with it
            extra[fs_meta["gate"]] = fs_path.parent / fs_meta["gate"]
        if fs_meta.get("polarity_maps"):  # and its polarity maps, while the embedding is the one they were fitted for
            if embedding_changed:
                log.warning("the embedding was adapted to the lab's crops: its polarity maps are left out of the bundle")
                fs_meta = {k: v for k, v in fs_meta.items() if not k.startswith("polarity_maps")}
            else:
                extra[fs_meta["polarity_maps"]] = fs_path.parent / fs_meta["polarity_maps"]
        save_fewshot(tmp / "fewshot.pt", net, fs_config,
                     {**fs_meta, "unknown_distance": u, "pool": "lab_crops.npy", "pool_bias": "lab_crops_bias.npy",
                      "refine_steps": settings.refine_steps,
                      "adapted": {"crops": len(lab_crops), "adabn": settings.adabn and len(lab_crops) >= 8}})
        report("embedding", 1, 1)

        made_with = {"surface": surface, "scans": [p.name for p in paths], "skipped": skipped,
                     "trained_on": [p.name for p in train_paths],
                     "held_back": [p.name for p in held], "label_source": source.name,
                     "settings": dataclasses.asdict(settings), "models": dataclasses.asdict(config.models),
                     "preprocess": dataclasses.asdict(config.preprocess) if dataclasses.is_dataclass(config.preprocess) else {},
                     "pseudo_label_pixels": n_labels}
        partial = tmp / "bundle"  # put in place of `out` only once whole: a failed run leaves `out` as it was
        bundle = write_bundle(partial, surface, unet=tmp / "unet.pt", classifier=tmp / "fewshot.pt",
                              support=support, made_with=made_with, extra=extra)
        # 4. the card: before/after on the held-back scans (never trained on, nothing selected on them)
        figures = card_figures(held, surface, config, bundle.path, support, lambda d, t: report("card", d, t))
        figures["seconds"] = round(time.perf_counter() - t_start, 1)
        figures["trained_on_scans"] = len(train_paths)
        figures["crops"] = int(len(lab_crops))
        bundle = write_bundle(partial, surface, unet=tmp / "unet.pt", classifier=tmp / "fewshot.pt", support=support,
                              made_with=made_with, figures=figures, card=card_text(surface, bundle.path, made_with, figures),
                              extra=extra)
        put_in_place(partial, Path(out))
    figures["bundle"] = bundle.id
    return figures


def readable_scans(paths: list[Path]) -> tuple[dict, list[str]]:
    """The scans of ``paths`` that read (path → Scan, in order), and one line for each that does
    not (logged as a warning: an aborted or truncated file in the lab's folder is skipped, not the
    whole run)."""
    good, skipped = {}, []
    for path in paths:
        try:
            good[path] = read_sxm(path)
        except Exception as exc:  # any bad file: named, skipped
            skipped.append(naming_the_file(path, exc))
            log.warning("skipped %s", skipped[-1])
    return good, skipped


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that holds files but no bundle (the scans' own folder, say): a bundle
    hashes every file in its folder."""
    from .bundle import MANIFEST

    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"{out} holds files and is no model bundle: give an empty or new folder, or a bundle to replace")


def check_support_folder(support: Path) -> None:
    """Refuse, before any work, a support set that is no folder of class folders of crops (``<class>/*.npy``)."""
    if not support.is_dir() or not any(sub.is_dir() and any(sub.glob("*.npy")) for sub in support.iterdir()):
        raise ValueError(f"--support {support}: not a folder of class folders of crops (<class>/*.npy)")


def put_in_place(partial: Path, out: Path) -> None:
    """Move the finished bundle ``partial`` to ``out``, replacing a bundle there (a bundle is one
    folder: nothing of the old one is kept)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.new")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(partial, staged)  # on out's own file system, so that the renames below are quick
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staged.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(out)


def card_figures(held: list[Path], surface: str, config, bundle: Path, support, progress) -> dict:
    """Before/after figures on the held-back scans (see the module docstring)."""
    from .load import load_analyser
    from .oneclick import evaluate_oneclick

    if not held:
        return {"held_back_scans": 0}
    before_cfg = config
    after_cfg = dataclasses.replace(config, models=dataclasses.replace(config.models, bundle=str(bundle)))
    has_truth = all(p.with_name(p.stem + ".truth.json").exists() for p in held)
    out: dict = {"held_back_scans": len(held), "with_truth": has_truth}
    if has_truth and len(held) < 2:  # clicks come from one held-back scan, the scoring from another
        out["note"] = (f"no one-click figures: {len(held)} held-back scan, at least 2 are needed (give more scans; "
                       "a quarter of them is held back)")
    for name, cfg in (("before", before_cfg), ("after", after_cfg)):
        if has_truth and len(held) >= 2:
            try:
                r = evaluate_oneclick(held, surface, lambda folder, c=cfg: load_analyser(c, surface, "torch", folder),
                                      shots=1, preprocess=config.preprocess)
                out[name] = {k: r[k] for k in ("label_accuracy", "f1", "precision", "recall", "eval_scans", "matched")}
                progress(1 if name == "before" else 2, 2)
                continue
            except ValueError as exc:  # too few clear examples in the held-back scans
                log.info("card: one-click figures not possible (%s); label-free figures", exc)
                out["note"] = f"no one-click figures on the held-back scans: {exc}"
        analyser = load_analyser(cfg, surface, "torch", support)
        counts, confidence = [], []
        for p in held:
            a = analyser.analyse(read_sxm(p))
            counts.append(len(a.defects))
            confidence += [d.label_score for d in a.defects if d.label_score is not None]
        out[name] = {"defects_per_scan": round(float(np.mean(counts)), 2),
                     "mean_label_confidence": round(float(np.mean(confidence)), 4) if confidence else None}
        progress(1 if name == "before" else 2, 2)
    return out


def card_text(surface: str, path: Path, made_with: dict, figures: dict) -> str:
    lines = [f"# Model bundle: {surface}, adapted by `stmwatch adapt`", "",
             f"Made from {len(made_with['trained_on'])} unlabelled scans ({made_with['label_source']} labels), "
             f"{figures.get('crops', 0)} defect crops; {figures.get('held_back_scans', 0)} scans held back for the "
             f"figures below (never trained on; nothing was selected on them). {figures.get('seconds', 0)} s.", "",
             "| | " + " | ".join(k for k in sorted(figures.get("before", {}))) + " |",
             "|---|" + "---|" * len(figures.get("before", {}))]
    for name in ("before", "after"):
        row = figures.get(name, {})
        lines.append(f"| {name} | " + " | ".join(str(row.get(k)) for k in sorted(figures.get("before", {}))) + " |")
    lines += ["", "With truth files beside the held-back scans: one-click label accuracy (1 click per class from "
              "the first held-back scans) and detection F1 at 0.5 nm; without: defects per scan and the mean "
              "classifier confidence (label-free, only a hint).", ""]
    if figures.get("note"):
        lines += [f"Note: {figures['note']}.", ""]
    lines += ["Settings: `config.json`. Files and sha256: `bundle.json`.", ""]
    return "\n".join(lines)


def write_json(figures: dict) -> str:
    return json.dumps(figures)
