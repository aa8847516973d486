"""Build the analyser that ``stmwatch process`` and the daemon use, from the ``[models]`` config.

``load_analyser(config)`` = the UNet segmenter (shipped weights unless ``segmenter_weights`` is
set, run by the configured backend) + the few-shot classifier when one can be built: the
classifier module ``stmwatch.models.fewshot.classifier`` must exist and provide
``load_classifier(surface_key, support_dir, weights, unknown_distance) -> Classifier``, and a
support set must be found (the ``support`` argument, else ``[models] support``, else the shipped
set ``models/support/<surface>/``). Otherwise the analyser is segment-only and every defect is
labelled ``defect``.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from .analyse import Analyser, Classifier
from .backends import make_backend
from .segment import UNetSegmenter
from .settings import ANALYSERS, ModelSettings
from .surfaces import Surface, get_surface
from .unet import load_checkpoint, model_hash

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
SUPPORT_DIR = PACKAGE_DIR / "support"
CLASSIFIER_MODULE = "stmwatch.models.fewshot.classifier"


def shipped_weights(surface: str) -> Path:
    """The shipped UNet checkpoint for ``surface``: ``weights/unet-<surface>.pt`` if there is one,
    else the multi-surface ``weights/unet.pt``."""
    specific = WEIGHTS_DIR / f"unet-{surface}.pt"
    return specific if specific.exists() else WEIGHTS_DIR / "unet.pt"


def load_segmenter(settings: ModelSettings, surface: Surface, preprocess=None,
                   backend: str | None = None) -> UNetSegmenter:
    """The UNet segmenter for ``surface`` with ``settings`` (backend overridden by ``backend``)."""
    path = Path(settings.segmenter_weights).expanduser() if settings.segmenter_weights else shipped_weights(surface.key)
    if not path.exists():
        raise FileNotFoundError(f"UNet weights {path} not found (set [models] segmenter_weights, "
                                "or train them: stmwatch train unet)")
    model, checkpoint = load_checkpoint(path)
    digest = model_hash(model)
    runner = make_backend(backend or settings.backend, model, settings.tile_px, settings.batch_tiles,
                          settings.engine_cache, settings.threads or None)
    meta = checkpoint.get("meta", {})
    decode = meta.get("decode", {})  # a network trained on planted defects: see its meta
    if not isinstance(decode, dict) or set(decode) - {"min_score", "ghost_method"}:
        raise ValueError(f"UNet weights {path}: meta 'decode' must be a table of min_score and ghost_method, "
                         f"not {decode!r}")
    log.info("segmenter: %s (%s), backend %s%s", path.name, digest[:12], runner.name,
             f", decoded as {decode}" if decode else "")
    return UNetSegmenter(model, runner, surface, version=digest[:12], preprocess=preprocess,
                         threshold=settings.threshold_for(surface.key), min_area_px=settings.min_area_px,
                         tile_px=settings.tile_px, tile_overlap_px=settings.tile_overlap_px,
                         batch_size=settings.batch_tiles, max_nm_per_px=settings.max_nm_per_px,
                         remove_ghosts=settings.remove_double_tip_ghosts, flips=settings.test_time_flips,
                         name=meta.get("name", "unet"),
                         min_score=float(decode.get("min_score", 0.0)),
                         ghost_method=decode.get("ghost_method", "image"))


def find_support(settings: ModelSettings, surface: Surface, support: str | Path | None) -> Path | None:
    """The support-set folder to use: ``support``, else the configured one, else the shipped one
    for the surface (None when there is none). An explicit folder that does not exist is an error."""
    chosen = support or settings.support
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"support set {path} is not a folder of class folders")
        return path
    shipped = SUPPORT_DIR / surface.key
    return shipped if shipped.is_dir() else None


def load_classifier(settings: ModelSettings, surface: Surface, support: Path | None,
                    backend: str | None = None) -> Classifier | None:
    """The few-shot classifier on ``support``, or None (logged) when it cannot be built here."""
    if support is None:
        log.info("no support set: segment only (every defect is labelled 'defect')")
        return None
    try:
        module = importlib.import_module(CLASSIFIER_MODULE)
    except ModuleNotFoundError as exc:
        if not CLASSIFIER_MODULE.startswith(str(exc.name)):
            raise
        log.warning("support set %s given but the few-shot classifier is not installed: segment only", support)
        return None
    weights = Path(settings.classifier_weights).expanduser() if settings.classifier_weights else None
    try:
        return module.load_classifier(surface.key, support, weights, settings.unknown_distance or None,
                                      backend=backend or settings.backend, polarity_maps=settings.polarity_maps,
                                      contrast_cue=settings.contrast_cue)
    except FileNotFoundError as exc:  # e.g. classifier weights not trained/shipped yet
        log.warning("few-shot classifier not available (%s): segment only", exc)
        return None


def load_analyser(config, surface: str | None = None, backend: str | None = None,
                  support: str | Path | None = None) -> Analyser:
    """The analyser for ``config`` (any object with ``models`` and ``preprocess`` settings, e.g. the
    daemon's config); ``surface``, ``backend`` and ``support`` override ``[models] surface``,
    ``backend`` and ``support``."""
    settings: ModelSettings = config.models
    chosen = get_surface(surface or settings.surface)
    bundle = None
    if settings.bundle:
        settings, bundle = with_bundle(settings, chosen.key)
        if support is None and not config.models.support and bundle.support is not None:
            support = bundle.support
    segmenter = load_segmenter(settings, chosen, getattr(config, "preprocess", None), backend)
    classifier = load_classifier(settings, chosen, find_support(settings, chosen, support), backend)
    return Analyser(segmenter, classifier, bundle=bundle.id if bundle else None)


def with_bundle(settings: ModelSettings, surface: str):
    """``settings`` with the weights of the bundle ``settings.bundle`` (checked: a
    :class:`~.bundle.BundleError` names what is wrong), and the bundle. A bundle made for another
    surface is refused."""
    import dataclasses

    from .bundle import BundleError, load_bundle

    bundle = load_bundle(settings.bundle)
    if bundle.surface and bundle.surface != surface:
        raise BundleError(f"model bundle {bundle.path} is for {bundle.surface}, not {surface}")
    return dataclasses.replace(
        settings, segmenter_weights=str(bundle.unet) if bundle.unet else settings.segmenter_weights,
        classifier_weights=str(bundle.classifier) if bundle.classifier else settings.classifier_weights), bundle


def make_analyser(kind: str, config, backend: str | None = None) -> Analyser:
    """The analyser of ``kind``: ``"shipped"`` (:func:`load_analyser` of ``config``) or
    ``"standin"`` (the classical blob detector of :mod:`.standin`, no weights). ``config`` is any
    object with ``models`` (:class:`ModelSettings`) and ``preprocess`` settings, e.g. the daemon's."""
    if kind == "standin":
        from .standin import standin_analyser

        log.warning("using the stand-in blob detector, not the shipped UNet (analyser = 'standin')")
        return standin_analyser(config.models.surface, config.preprocess)
    if kind not in ANALYSERS:
        raise ValueError(f"analyser must be one of {ANALYSERS}, not {kind!r}")
    return load_analyser(config, backend=backend)
