"""``stmwatch train unet``: train the UNet segmenter on simulated scans with known defect positions.

Data: for each surface, ``--scans`` scans are simulated (seeds ``surface_index * 100_000 + i``,
all below :data:`~stmwatch.models.eval_segment.HELD_OUT_SEED`), random size, direction, angle,
offset, and each experimental artefact on at random; each is preprocessed exactly as at inference
(``preprocess.prepare``) and cut into ``--patch``-pixel model-scale patches kept in memory (and
cached in ``OUT/data.npz``). The target is a disc of ``--disc-nm`` radius at each true defect
centre, which makes the component centroid the defect position.

Augmentation, per batch: the four flips that keep scan lines horizontal (identity, left-right,
up-down, both) -- the lattice appears at every angle in the data already, and a transposition
would turn scan-line artefacts into columns, which no microscope makes. The channels are never
swapped: the truth is where a defect appears in the *forward* frame (channel 0), and the backward
frame is shifted against it along the line (hysteresis); swapping would teach the network to sit
between the two. Then extra experimental noise (``simulate.apply_noise``: line offsets, scars, tip changes,
1/f noise, drift) on the image, the labels left clean.

Loss: binary cross-entropy + soft Dice. Each epoch prints loss and validation detection F1
(match radius 0.5 nm) and writes ``OUT/last.pt`` (weights, optimiser, epoch; ``--resume`` goes on
from it) and ``OUT/best.pt`` (best validation F1, weights only: what ships).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .eval_segment import DetectionScore
from .segment import find_components
from .sim.simulate import training_scan
from .unet import UNet, save_checkpoint

log = logging.getLogger(__name__)

SURFACE_KEYS = ("si001h", "ge001", "tio2110")


@dataclasses.dataclass
class Patches:
    """Training patches: ``images`` ``(N, C, P, P)`` float32, ``targets`` ``(N, P, P)`` float32
    (1 inside a disc around each defect), ``centres`` a list of ``(k, 2)`` arrays of true centres
    (model px, row/col) per patch, for the F1."""

    images: np.ndarray
    targets: np.ndarray
    centres: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def disc_target(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, radius: float) -> np.ndarray:
    """``(H, W)`` float32: 1 within ``radius`` pixels of any ``(rows[i], cols[i])``, else 0."""
    target = np.zeros(shape, dtype=np.float32)
    r_int = int(np.ceil(radius)) + 1
    for r, c in zip(rows, cols):
        r0, r1 = max(0, int(r) - r_int), min(shape[0], int(r) + r_int + 2)
        c0, c1 = max(0, int(c) - r_int), min(shape[1], int(c) + r_int + 2)
        if r0 >= r1 or c0 >= c1:
            continue
        rr, cc = np.mgrid[r0:r1, c0:c1]
        target[r0:r1, c0:c1] = np.maximum(target[r0:r1, c0:c1], ((rr - r) ** 2 + (cc - c) ** 2 <= radius**2))
    return target


def cut_patches(image: np.ndarray, centres: np.ndarray, patch: int, count: int, radius: float,
                rng: np.random.Generator) -> Patches:
    """``count`` random ``patch``-pixel squares of ``image`` ``(C, H, W)`` (zero-padded if smaller)
    with their disc targets; ``centres`` ``(k, 2)`` model-pixel row/col of the defects."""
    c, h, w = image.shape
    ph, pw = max(h, patch), max(w, patch)
    image = np.pad(image, ((0, 0), (0, ph - h), (0, pw - w)))
    target = disc_target((ph, pw), centres[:, 0], centres[:, 1], radius)
    images, targets, kept = [], [], []
    for _ in range(count):
        r0, c0 = int(rng.integers(0, ph - patch + 1)), int(rng.integers(0, pw - patch + 1))
        images.append(image[:, r0:r0 + patch, c0:c0 + patch])
        targets.append(target[r0:r0 + patch, c0:c0 + patch])
        inside = ((centres[:, 0] >= r0 - 0.5) & (centres[:, 0] < r0 + patch - 0.5)
                  & (centres[:, 1] >= c0 - 0.5) & (centres[:, 1] < c0 + patch - 0.5))
        kept.append(centres[inside] - (r0, c0))
    return Patches(np.stack(images).astype(np.float32), np.stack(targets), kept)


def join(parts: list[Patches]) -> Patches:
    return Patches(np.concatenate([p.images for p in parts]), np.concatenate([p.targets for p in parts]),
                   [c for p in parts for c in p.centres])


def split_validation(parts: list[Patches], val_fraction: float) -> tuple[Patches, Patches]:
    """``(training, validation)`` patches from per-scan ``parts``: the last ``val_fraction`` of the
    scans (at least one, when there are two or more) for validation; a single scan serves both."""
    n_val = max(1, round(val_fraction * len(parts))) if len(parts) > 1 else 0
    return join(parts[: len(parts) - n_val]), join(parts[len(parts) - n_val:] or parts[:1])


def simulated_patches(surfaces: list[str], scans: int, patch: int, radius_px: float, seed_base: int,
                      max_per_scan: int = 10, double_tip_share: float | None = None, workers: int = 1,
                      randomise: float = 0.0) -> Patches:
    """Patches from ``scans`` simulated scans per surface (seeds ``seed_base + k*100_000 + i``):
    about one per ``patch``² of model image, 2 to ``max_per_scan`` per scan (``double_tip_share``:
    see :func:`training_scan`; ``randomise``: the share of scans that are domain-randomised, see
    :func:`scan_patches`); ``workers`` > 1 simulates in that many processes (same result)."""
    jobs = [(key, seed_base + SURFACE_KEYS.index(key) * 100_000 + i, patch, radius_px, max_per_scan, double_tip_share,
             randomise) for key in surfaces for i in range(scans)]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return join(pool.starmap(scan_patches, jobs, chunksize=1))
    return join([scan_patches(*job) for job in jobs])


def scan_patches(key: str, seed: int, patch: int, radius_px: float, max_per_scan: int,
                 double_tip_share: float | None, randomise: float = 0.0) -> Patches:
    """The patches of one simulated training scan (see :func:`simulated_patches`); with
    probability ``randomise`` (drawn from the seed) a domain-randomised scan
    (:func:`~stmwatch.models.sim.randomise.randomised_scan`) instead of the training style."""
    from .preprocess import prepare

    if randomise > 0 and np.random.default_rng([seed, 77]).random() < randomise:
        from .sim.randomise import randomised_scan  # (scipy: only for training)

        scan, truth, _ = randomised_scan(key, seed)
    else:
        scan, truth = training_scan(key, seed, double_tip_share)
    prepared = prepare(scan, key)
    rows, cols = prepared.from_scan(np.array([d.row for d in truth.defects], dtype=float),
                                    np.array([d.col for d in truth.defects], dtype=float))
    centres = np.stack([rows, cols], axis=1) if len(rows) else np.zeros((0, 2))
    image = np.where(prepared.valid, prepared.image, 0.0).astype(np.float32)
    if len(centres):  # defects in lines never acquired are not targets
        ok = prepared.valid[np.clip(np.rint(centres[:, 0]).astype(int), 0, image.shape[1] - 1),
                            np.clip(np.rint(centres[:, 1]).astype(int), 0, image.shape[2] - 1)]
        centres = centres[ok]
    count = int(np.clip(round(image.shape[1] * image.shape[2] / patch**2), 2, max_per_scan))
    return cut_patches(image, centres, patch, count, radius_px, np.random.default_rng(seed))


# ---- augmentation --------------------------------------------------------------------------------
def augment(images: np.ndarray, targets: np.ndarray, rng: np.random.Generator,
            noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Random scan-line-preserving flips per sample (both channels and the target alike), and
    extra experimental noise on a fraction ``noise`` of the images (labels untouched)."""
    images, targets = images.copy(), targets.copy()
    for i in range(len(images)):
        if rng.random() < 0.5:  # left-right; channels not swapped: the target stays on channel 0
            images[i] = images[i][:, :, ::-1]
            targets[i] = targets[i][:, ::-1]
        if rng.random() < 0.5:
            images[i] = images[i][:, ::-1, :]
            targets[i] = targets[i][::-1, :]
        if noise > 0 and rng.random() < noise:
            images[i] = extra_noise(images[i], rng)
    return np.ascontiguousarray(images), np.ascontiguousarray(targets)


def extra_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The simulator's experimental noise (``simulate.apply_noise``: one or two random kinds of
    line offsets, scars, tip change, 1/f noise, white noise) on a normalised ``(C, H, W)`` patch."""
    from .sim.artefacts import NOISE_KINDS
    from .sim.simulate import apply_noise

    kinds = [str(k) for k in rng.choice(NOISE_KINDS, size=int(rng.integers(1, 3)), replace=False)]
    return apply_noise(image, rng, kinds, strength=float(rng.uniform(0.3, 1.2)))


class AugmentedBatches(torch.utils.data.IterableDataset):
    """``steps`` augmented training batches ``(x, y)`` for one epoch; with a DataLoader of
    ``workers`` processes each makes its share, seeded by ``(seed, epoch, worker)``."""

    def __init__(self, data: Patches, steps: int, batch: int, seed: int, epoch: int, noise: float):
        self.data, self.steps, self.batch, self.seed, self.epoch, self.noise = data, steps, batch, seed, epoch, noise

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = np.random.default_rng([self.seed, self.epoch] + ([worker] if workers > 1 else []))
        for _ in range(worker, self.steps, workers):
            idx = rng.integers(0, len(self.data), self.batch)
            x, y = augment(self.data.images[idx], self.data.targets[idx], rng, self.noise)
            yield torch.from_numpy(x), torch.from_numpy(y)


def batches(data: Patches, steps: int, batch: int, seed: int, epoch: int, noise: float,
            workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's augmented batches, made in this process (``workers`` ≤ 1) or in ``workers``
    processes ahead of the optimiser (a GPU run would otherwise wait for the augmentation)."""
    dataset = AugmentedBatches(data, steps, batch, seed, epoch, noise)
    if workers <= 1:
        return iter(dataset)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                            multiprocessing_context="fork", prefetch_factor=4))


# ---- training --------------------------------------------------------------------------------------
def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice; ``logits`` ``(B, 1, H, W)``, ``target`` ``(B, H, W)``."""
    logits = logits[:, 0]
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice


def validate(model: UNet, val: Patches, device: torch.device, radius_px: float = 5.0, threshold: float = 0.5,
             min_area: int = 6, batch: int = 16) -> DetectionScore:
    """Detection score on the validation patches (model in eval mode; units model pixels)."""
    model.eval()
    score = DetectionScore()
    with torch.inference_mode():
        for i in range(0, len(val), batch):
            x = torch.from_numpy(val.images[i:i + batch]).to(device)
            probs = torch.sigmoid(model(x))[:, 0].cpu().numpy()
            for prob, centres in zip(probs, val.centres[i:i + batch]):
                comps, _ = find_components(prob, threshold, min_area)
                score.add(np.array([(c.row, c.col) for c in comps]).reshape(-1, 2), centres, radius_px)
    return score


def learning_rate(step: int, total: int, peak: float, warmup: float = 0.1) -> float:
    """Linear warm-up over the first ``warmup`` of the ``total`` steps, then cosine decay to 1 % of
    ``peak``; a function of the step alone, so a resumed run (even a longer one) follows it."""
    w = max(1, int(warmup * total))
    if step < w:
        return peak * (step + 1) / w
    t = min(1.0, (step - w) / max(1, total - w))
    return peak * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * t)))


def train(model: UNet, data: Patches, val: Patches, out: Path, *, epochs: int, steps: int, batch: int,
          lr: float, seed: int, device: str = "cpu", resume: bool = False, noise: float = 0.5,
          meta: dict | None = None, progress: bool = True, workers: int = 0) -> list[dict]:
    """Train ``model`` in place; returns one record per epoch (loss, precision, recall, f1)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    history: list[dict] = []
    start, best = 0, -1.0
    if resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location=dev, weights_only=False)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        start, best, history = state["epoch"], state["best_f1"], state["history"]
        log.info("resuming from %s after epoch %d", out / "last.pt", start)
    columns = [TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        for epoch in range(start, epochs):
            torch.manual_seed(seed * 1000 + epoch)
            model.train()
            task = bar.add_task("train", total=steps, epoch=epoch + 1, loss=0.0)
            losses = []
            t0 = time.perf_counter()
            for step, (x, y) in enumerate(batches(data, steps, batch, seed, epoch, noise, workers)):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(epoch * steps + step, epochs * steps, lr)
                loss = loss_fn(model(x.to(dev)), y.to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, loss=float(np.mean(losses[-20:])))
            bar.remove_task(task)
            score = validate(model, val, dev)
            record = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 5), "precision": round(score.precision, 4),
                      "recall": round(score.recall, 4), "f1": round(score.f1, 4),
                      "seconds": round(time.perf_counter() - t0, 1)}
            history.append(record)
            log.info("epoch %d: %s", epoch + 1, record)
            if progress:
                bar.console.print(f"epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  val P {record['precision']:.3f}"
                                  f"  R {record['recall']:.3f}  F1 {record['f1']:.3f}  ({record['seconds']} s)")
            model.cpu()
            if score.f1 > best:
                best = score.f1
                save_checkpoint(model, out / "best.pt", meta={**(meta or {}), "epoch": epoch + 1, "val": record})
            save_checkpoint(model, out / "last.pt", meta=meta, optimizer=opt.state_dict(),
                            epoch=epoch + 1, best_f1=best, history=history)
            model.to(dev)
    model.cpu().eval()
    return history
