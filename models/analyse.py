"""The analysis of one scan: preprocess → segment → classify, behind two small interfaces.

This is the seam between the models and everything that uses them (``stmwatch process``, the
daemon's pipeline, the live stream): they call :meth:`Analyser.analyse` and never reach into a
network. A segmenter and a classifier are anything with the methods below.

Conventions: defects come back in the display frame of the scan *as read* (row 0 at top,
fractional pixel indices, an integer is a pixel centre) with scanner-frame metres from
``Scan.pixel_to_scanner``; crops are ``(channels, h, w)`` float32 at the surface's model scale.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Protocol

import numpy as np

from stmwatch.drivers.scan import Scan

from .defects import Defect, count_labels

log = logging.getLogger(__name__)


class Segmenter(Protocol):
    """Finds defects in a scan."""

    name: str  # e.g. "unet-multi"
    version: str  # identifies the weights (e.g. first 12 hex digits of their sha256)

    def segment(self, scan: Scan) -> list[Defect]:
        """Every defect in ``scan``, each with position, area, score and a classifier crop."""
        ...


class Classifier(Protocol):
    """Names defects from their crops."""

    name: str
    version: str

    def classify(self, crops: np.ndarray, bias_v: float | None = None) -> list[tuple[str, float]]:
        """``crops`` ``(n, channels, h, w)`` float32 (the defects of one scan, taken at sample bias
        ``bias_v`` in V, None if unknown) → one ``(label, score)`` per crop, in one forward pass; the
        label is ``"unknown"`` when a crop is unlike every support class."""
        ...


@dataclasses.dataclass
class Analysis:
    """What one scan gave: its defects, their counts by label, where the time went (ms), and
    what an operator should know about it (``warnings``: a double tip, a surface that does not look
    like the one configured, pixels too coarse; one sentence each)."""

    scan: Scan
    defects: list[Defect]
    counts: dict[str, int]
    timing_ms: dict[str, float]
    model_versions: dict[str, str]
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_xarray(self):
        """The scan, its defects (a table along dim ``defect``) and warnings as an
        ``xarray.Dataset`` (``Scan.to_xarray``; needs the ``[xarray]`` extra)."""
        return self.scan.to_xarray(self.defects, self.warnings)


def unlike_every_class(defects: list[Defect], surface) -> str | None:
    """A warning when the classifier found every one of at least :data:`UNLIKE_MIN` defects unlike
    all of ``surface``'s classes (all ``unknown``): then the scan most likely does not show that
    surface. (One or two unknown defects on a scan of the right surface are no reason to ask.)"""
    if len(defects) < UNLIKE_MIN or any(d.label != "unknown" for d in defects) or surface is None:
        return None
    return (f"all {len(defects)} defects are unlike every {surface.title} class (unknown): is it a "
            f"{surface.title} scan ([models] surface, --surface)?")


UNLIKE_MIN = 3


@dataclasses.dataclass
class Analyser:
    """A segmenter and (optionally) a classifier, applied to one scan at a time."""

    segmenter: Segmenter
    classifier: Classifier | None = None
    bundle: str | None = None  # the id of the model bundle the models came from (models/bundle.py)

    @property
    def model_versions(self) -> dict[str, str]:
        versions = {"segmenter": f"{self.segmenter.name}@{self.segmenter.version}"}
        if self.classifier is not None:
            versions["classifier"] = f"{self.classifier.name}@{self.classifier.version}"
        if self.bundle:
            versions["bundle"] = self.bundle
        return versions

    def check_surface(self, scan: Scan) -> str | None:
        """A warning when the segmenter's last preprocessed scan does not show the atomic rows of the
        surface it was set up for (:mod:`.lattice`); None otherwise."""
        from .lattice import surface_mismatch

        prepared, surface = getattr(self.segmenter, "last_prepared", None), getattr(self.segmenter, "surface", None)
        warning = surface_mismatch(prepared, surface) if prepared is not None and surface is not None else None
        if warning:
            log.info("%s: %s", scan.name, warning)  # the Analysis carries it to the user
        return warning

    def analyse(self, scan: Scan, read_ms: float = 0.0) -> Analysis:
        """Segment and classify ``scan``; ``read_ms`` is the time its reading took, for the record."""
        t0 = time.perf_counter()
        defects = self.segmenter.segment(scan)
        t1 = time.perf_counter()
        warnings = list(getattr(self.segmenter, "last_warnings", []))
        mismatch = self.check_surface(scan)
        if mismatch:
            warnings.append(mismatch)
        with_crops = [d for d in defects if d.crop is not None]
        if self.classifier is not None and with_crops:
            labels = self.classifier.classify(np.stack([d.crop for d in with_crops]), bias_v=scan.bias_v)
            for defect, (label, score) in zip(with_crops, labels):
                defect.label, defect.label_score = label, float(score)
        t2 = time.perf_counter()
        unlike = unlike_every_class(defects, getattr(self.segmenter, "surface", None))
        if unlike:
            warnings.append(unlike)
        segment_ms = (t1 - t0) * 1e3
        timing = {
            "read": read_ms,
            # a segmenter that preprocesses reports it in .last_timing_ms; else it is in segment
            "preprocess": float(getattr(self.segmenter, "last_timing_ms", {}).get("preprocess", 0.0)),
            "segment": segment_ms,
            "classify": (t2 - t1) * 1e3,
        }
        timing["segment"] -= timing["preprocess"]
        timing["total"] = read_ms + (t2 - t0) * 1e3
        return Analysis(scan, defects, count_labels(defects), {k: round(v, 2) for k, v in timing.items()},
                        self.model_versions, warnings)
