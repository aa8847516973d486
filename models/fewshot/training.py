"""Training a few-shot method on crop sets, and saving/loading what was trained.

Episodic methods (prototypical, matching, relation) learn from N-way K-shot episodes, each drawn
from one surface; SimpleShot learns as a plain classifier over every training class (a linear head
that is thrown away afterwards). With ``generate`` set, every class also gives new classes made by
data manipulation (the method's ablation, see :func:`episodes.generate_classes`).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import FewShotMethod
from .class_looks import episode_class_looks
from .crops import CropSet, normalise_crops
from .episodes import augment, generate_classes, sample_episode
from .instrument import instrument_augment
from .looks import LookSet, sample_cross_episode, sample_session_episode, session_crop_sets
from .registry import build_method

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    """What a training run does; saved with the weights."""

    method: str = "proto"
    backbone: str = "conv4"
    metric: str = "euclidean"  # prototypical network only: euclidean | cosine
    way: int = 8  # classes per training episode (capped at the classes a surface has)
    shot: int = 5  # support crops per class in training episodes (tests are 1-shot; see docs/fewshot.md)
    query: int = 8  # query crops per class per episode
    episodes: int = 1000  # training episodes (SimpleShot: batches)
    batch_size: int = 64  # SimpleShot batch size
    lr: float = 1e-3
    seed: int = 0
    augment: bool = True  # shift, gain and noise (see episodes.augment)
    strong_augment: bool = False  # also blur, scale jitter, random lattice-like background (episodes.augment)
    mix_surfaces: bool = False  # episodes draw their classes from all surfaces together (way up to all classes)
    learn_temperature: bool = False  # prototypical network, cosine metric: train the temperature
    dihedral: bool = False  # augmentation also turns/mirrors crops
    instrument_augment: bool = False  # also tip, lag, contrast and line noise of other instruments (instrument.py)
    crop_norm: str = "none"  # "per_crop": crops normalised each on its own, in training and by the classifier
    cross_look: float = 0.0  # share of episodes from a LookSet whose queries have another look than the support (looks.py)
    class_looks: float = 0.0  # share of an episode's classes given a new look of their own (class_looks.py)
    init: str = ""  # weights the run started from (fine-tuning), for the record
    generate: tuple[str, ...] = ()  # class-generation transforms; () = off
    surfaces: tuple[str, ...] = ()  # for the record


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _plain(crops: CropSet | LookSet) -> CropSet:
    """A crop set without its looks."""
    return crops.crop_set() if isinstance(crops, LookSet) else crops


def train(crop_sets: list[CropSet | LookSet], config: TrainConfig,
          on_step: Callable[[int, float, FewShotMethod], None] | None = None,
          start: FewShotMethod | None = None) -> FewShotMethod:
    """A method trained on ``crop_sets`` as ``config`` says; ``on_step(step, loss, method)`` after each
    step (for progress and checkpoints). ``start``: fine-tune this method instead of a new one.
    A :class:`~.looks.LookSet` gives cross-look episodes (``config.cross_look`` of its episodes)
    and plain ones.

    Deterministic for a given seed (on one thread)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    method = start if start is not None else build_method(config.method, config.backbone, config.metric,
                                                          config.learn_temperature)
    if method.trained_by == "none":
        return method.eval()
    if config.generate:
        crop_sets = [generate_classes(_plain(s), config.generate) for s in crop_sets]
        log.info("with generated classes: %s", {s.surface: len(s.crops) for s in crop_sets})
    params = list(method.parameters())
    if method.trained_by == "supervised":
        crop_sets = [_plain(s) for s in crop_sets]
        x, y = _pool(crop_sets)
        head = nn.Linear(method.feature_mean.numel(), int(y.max()) + 1)  # thrown away after training
        params += list(head.parameters())
        step_fn = _supervised_steps(method, head, x, y, config, rng)
    else:
        step_fn = _episode_steps(method, crop_sets, config, rng)
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [int(config.episodes * 0.5), int(config.episodes * 0.75)], gamma=0.3)
    method.train()
    for step in range(config.episodes):
        loss = next(step_fn)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, float(loss.detach()), method)
    method.eval()
    if method.trained_by == "supervised":
        _set_feature_mean(method, crop_sets)
    return method


def _episode_steps(method: FewShotMethod, crop_sets: list[CropSet | LookSet], config: TrainConfig,
                   rng: np.random.Generator):
    """Yields the loss of one episode after another; each episode from one crop set, drawn at random
    with probability proportional to its number of classes (with ``mix_surfaces``: from the classes
    of all surfaces together); from a :class:`~.looks.LookSet`, ``config.cross_look`` of them cross-look,
    and from one that knows its crops' sessions (microscopes) every episode within one session."""
    look_sets = [s if isinstance(s, LookSet) else None for s in crop_sets]
    crop_sets = [_plain(s) for s in crop_sets]
    look_of = {id(c): ls for c, ls in zip(crop_sets, look_sets) if ls is not None}
    sessions_of = {id(c): session_crop_sets(ls, config.shot + config.query)
                   for c, ls in zip(crop_sets, look_sets) if ls is not None and ls.sessions is not None}
    if config.mix_surfaces:
        crop_sets = [CropSet("+".join(s.surface for s in crop_sets),
                             {f"{s.surface}/{c}": x for s in crop_sets for c, x in s.crops.items()})]
    weights = np.array([len(s.crops) for s in crop_sets], float)
    while True:
        s = crop_sets[rng.choice(len(crop_sets), p=weights / weights.sum())]
        way = min(config.way, sum(len(x) >= config.shot + config.query for x in s.crops.values()))
        ls = look_of.get(id(s))
        if id(s) in sessions_of:
            ep = sample_session_episode(sessions_of[id(s)], way, config.shot, config.query, rng)
        elif ls is not None and rng.random() < config.cross_look:
            ep = sample_cross_episode(ls, way, config.shot, config.query, rng)
        else:
            ep = sample_episode(s, way, config.shot, config.query, rng)
        sup, qry = ep.support, ep.query
        if config.class_looks:
            sup, qry = episode_class_looks(sup, ep.support_labels, qry, ep.query_labels, rng, config.class_looks)
        if config.instrument_augment:
            sup, qry = (instrument_augment(x, rng) for x in (sup, qry))
        if config.augment:
            sup, qry = (augment(x, rng, dihedral=config.dihedral, strong=config.strong_augment) for x in (sup, qry))
        if config.crop_norm == "per_crop":
            sup, qry = normalise_crops(sup), normalise_crops(qry)
        yield method.episode_loss(_tensor(sup), torch.from_numpy(ep.support_labels), _tensor(qry),
                                  torch.from_numpy(ep.query_labels))


def _pool(crop_sets: list[CropSet]) -> tuple[np.ndarray, np.ndarray]:
    """Every crop of every class of every surface ``(n, C, H, W)`` with a class index ``(n,)``."""
    xs, ys = [], []
    for s in crop_sets:
        for label in s.labels:
            xs.append(s.crops[label])
            ys.append(np.full(len(s.crops[label]), len(ys), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _supervised_steps(method: FewShotMethod, head: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig,
                      rng: np.random.Generator):
    """Yields the cross-entropy of one batch after another, drawn from ``x``/``y`` (SimpleShot)."""
    while True:
        idx = rng.choice(len(x), size=min(config.batch_size, len(x)), replace=False)
        batch = augment(x[idx], rng, dihedral=config.dihedral, strong=config.strong_augment) if config.augment else x[idx]
        yield F.cross_entropy(head(method.backbone(_tensor(batch))), torch.from_numpy(y[idx]))


@torch.no_grad()
def _set_feature_mean(method: FewShotMethod, crop_sets: list[CropSet]) -> None:
    """SimpleShot's centring: the mean feature of every training crop."""
    feats = [method.backbone(_tensor(x)) for s in crop_sets for x in s.crops.values()]
    method.feature_mean.copy_(torch.cat(feats).mean(dim=0))


def save(path: Path | str, method: FewShotMethod, config: TrainConfig, meta: dict | None = None) -> Path:
    """Write ``method``'s weights, ``config`` and ``meta`` (plain JSON-like values) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dataclasses.asdict(config), "meta": meta or {},
                "state_dict": method.state_dict()}, path)
    return path


def load(path: Path | str) -> tuple[FewShotMethod, TrainConfig, dict]:
    """A method saved by :func:`save`, in eval mode, with its config and meta."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    config = TrainConfig(**{**ckpt["config"], "generate": tuple(ckpt["config"]["generate"]),
                            "surfaces": tuple(ckpt["config"]["surfaces"])})
    method = build_method(config.method, config.backbone, config.metric, config.learn_temperature)
    method.load_state_dict(ckpt["state_dict"])
    return method.eval(), config, ckpt["meta"]
