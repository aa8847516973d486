"""The UNet segmenter: scan → preprocess → tiled UNet → components → :class:`Defect` list.

Post-processing (all in model pixels, the ``(H, W)`` display-frame grid of ``Prepared.image``):
the probability map is zeroed where the scan had no data (``Prepared.valid``), thresholded,
split into 8-connected components; components smaller than ``min_area_px`` are dropped; each
remaining one becomes a defect at its probability-weighted centroid, converted with
``Prepared.to_scan`` to scan display pixels and with ``Scan.pixel_to_scanner`` to metres. The
classifier crop is ``(channels, 32, 32)`` from the model image around the centroid, zero
(= the normalised median) outside the image.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from stmwatch.drivers.scan import Scan

from .backends import Backend
from .defects import Defect
from .double_tip import DoubleTip, resolve_double_tip, resolve_marked_both
from .preprocess import Prepared, PreprocessSettings, prepare
from .surfaces import Surface, get_surface
from .unet import UNet, flip_averaged_predict

log = logging.getLogger(__name__)

CROP_PX = 32
GHOST_METHODS = ("image", "pairs")  # double-tip handling: see UNetSegmenter.defects_from


# ---- connected components ----------------------------------------------------------------------
def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D bool mask → ``(labels, n)``: ``labels`` int32 of the
    mask's shape, 0 for background and 1..n for the components (numbered in raster order of
    their first pixel).

    Runs of foreground along each row are found with numpy, then runs on neighbouring rows that
    touch (including diagonally) are joined with a union-find; cost grows with the number of
    runs, not of pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = mask.shape
    padded = np.zeros((rows, cols + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    run_row, run_start = np.nonzero(steps == 1)
    _, run_end = np.nonzero(steps == -1)  # exclusive; same raster order as the starts
    parent = list(range(len(run_row)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(run_row, np.arange(rows + 1))
    for r in range(1, rows):
        i, i_end = int(first[r - 1]), int(first[r])
        j, j_end = int(first[r]), int(first[r + 1])
        while i < i_end and j < j_end:
            if run_start[i] <= run_end[j] and run_start[j] <= run_end[i]:  # touch, diagonals too
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if run_end[i] < run_end[j]:
                i += 1
            else:
                j += 1
    labels = np.zeros((rows, cols), dtype=np.int32)
    numbers: dict[int, int] = {}
    for k in range(len(run_row)):
        root = find(k)
        if root not in numbers:
            numbers[root] = len(numbers) + 1
        labels[run_row[k], run_start[k]:run_end[k]] = numbers[root]
    return labels, len(numbers)


@dataclasses.dataclass
class Component:
    """One thresholded component, model pixels: weighted centroid, area (pixels), mean probability."""

    row: float
    col: float
    area: int
    score: float


def find_components(prob: np.ndarray, threshold: float = 0.5, min_area: int = 1,
                    valid: np.ndarray | None = None) -> tuple[list[Component], np.ndarray]:
    """Threshold ``prob`` ``(H, W)`` and return its components (``area >= min_area``, pixels with
    ``valid`` False ignored) and the label image (dropped components set to 0)."""
    prob = np.asarray(prob, dtype=np.float64)
    mask = prob > threshold
    if valid is not None:
        mask &= valid
    labels, n = label_components(mask)
    if n == 0:
        return [], labels
    flat = labels.ravel()
    p = prob.ravel()
    rr, cc = np.indices(prob.shape)
    area = np.bincount(flat, minlength=n + 1)
    weight = np.bincount(flat, weights=p, minlength=n + 1)
    row = np.bincount(flat, weights=p * rr.ravel(), minlength=n + 1)
    col = np.bincount(flat, weights=p * cc.ravel(), minlength=n + 1)
    keep = np.zeros(n + 1, dtype=bool)
    components = []
    for k in range(1, n + 1):
        if area[k] < min_area:
            continue
        keep[k] = True
        components.append(Component(row[k] / weight[k], col[k] / weight[k], int(area[k]), weight[k] / area[k]))
    labels = np.where(keep[labels], labels, 0)
    return components, labels


def crops_at(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int = CROP_PX) -> np.ndarray:
    """``(n, channels, size, size)`` float32 cut-outs of ``image`` ``(channels, H, W)`` centred
    on the pixels nearest ``(rows, cols)`` (model pixels), zero outside the image."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float32))
    half = size // 2
    padded = np.pad(image, ((0, 0), (half, half), (half, half)))
    out = np.empty((len(rows), image.shape[0], size, size), dtype=np.float32)
    for i, (r, c) in enumerate(zip(np.rint(rows).astype(int), np.rint(cols).astype(int))):
        out[i] = padded[:, r:r + size, c:c + size]  # padded[r + half - half] = image row r - half
    return out


# ---- the segmenter -----------------------------------------------------------------------------
def defects_at(scan: Scan, prepared: Prepared, components: list[Component]) -> list[Defect]:
    """One :class:`Defect` per component (found on ``prepared``'s model grid): its centroid in
    ``scan``'s display pixels and scanner metres, its area in scan pixels, and its crop."""
    if not components:
        return []
    model_rows = np.array([c.row for c in components])
    model_cols = np.array([c.col for c in components])
    rows, cols = prepared.to_scan(model_rows, model_cols)
    xs, ys = scan.pixel_to_scanner(rows, cols)
    crops = crops_at(prepared.image, model_rows, model_cols)
    scan_px_per_model_px = prepared.scale[0] * prepared.scale[1]
    return [Defect(row=float(r), col=float(c), x_m=float(x), y_m=float(y),
                   area_px=comp.area * scan_px_per_model_px, score=float(min(1.0, comp.score)), crop=crop)
            for r, c, x, y, comp, crop in zip(rows, cols, xs, ys, components, crops)]


def too_coarse(scan: Scan, max_nm_per_px: float) -> str | None:
    """Why ``scan``'s pixels are too coarse to find defects in (coarser than ``max_nm_per_px`` nm
    on either axis), or None. The UNet was trained on 0.06-0.2 nm per pixel, and ~1 nm defects
    vanish in coarser survey scans."""
    if max(scan.pixel_size_m) * 1e9 <= max_nm_per_px:
        return None
    dx, dy = (v * 1e9 for v in scan.pixel_size_m)
    return f"pixels of {dx:.3g} x {dy:.3g} nm are coarser than max_nm_per_px = {max_nm_per_px:g}: defects are not resolved"


class UNetSegmenter:
    """The :class:`~stmwatch.models.analyse.Segmenter` of stmwatch: a UNet run by a backend.

    ``last_timing_ms["preprocess"]`` is the preprocessing time of the last scan (the
    :class:`~stmwatch.models.analyse.Analyser` reports it apart from segmentation);
    ``last_warnings`` says what an operator should know about it (a double tip; pixels too coarse
    to segment), one sentence each.
    """

    def __init__(self, model: UNet, backend: Backend, surface: Surface | str, *, version: str,
                 preprocess: PreprocessSettings | None = None, threshold: float = 0.5, min_area_px: int = 6,
                 tile_px: int = 256, tile_overlap_px: int = 32, batch_size: int = 8, max_nm_per_px: float = 0.25,
                 remove_ghosts: bool = True, flips: int = 1, name: str = "unet", ghost_method: str = "image",
                 min_score: float = 0.0):
        self.model = model.eval()
        self.backend = backend
        self.surface = get_surface(surface) if isinstance(surface, str) else surface
        self.preprocess = preprocess or PreprocessSettings()
        self.threshold, self.min_area_px = threshold, min_area_px
        self.tile_px, self.tile_overlap_px, self.batch_size = tile_px, tile_overlap_px, batch_size
        self.max_nm_per_px = max_nm_per_px
        if ghost_method not in GHOST_METHODS:
            raise ValueError(f"ghost_method must be one of {GHOST_METHODS}, not {ghost_method!r}")
        self.remove_ghosts, self.ghost_method, self.min_score = remove_ghosts, ghost_method, min_score
        self.flips = flips
        self.last_double_tip: DoubleTip | None = None  # of the last scan, when one was found
        self.last_warnings: list[str] = []
        self.name, self.version = name, version
        self.last_timing_ms: dict[str, float] = {}
        self.last_probability: np.ndarray | None = None  # (H, W) model pixels, for overlays
        self.last_prepared: Prepared | None = None

    def probability(self, prepared: Prepared) -> np.ndarray:
        """``(H, W)`` float32 defect probability on the model grid (0 where there was no data), the
        mean over ``flips`` mirror images of the scan (test-time augmentation)."""
        prob = flip_averaged_predict(prepared.image, self.backend, self.flips, self.tile_px, self.tile_overlap_px,
                                     self.batch_size)
        return np.where(prepared.valid, prob, 0.0).astype(np.float32)

    def defects_from(self, scan: Scan, prepared: Prepared, prob: np.ndarray) -> list[Defect]:
        """Post-processing: components of ``prob`` → defects in ``scan``'s pixels and metres; with
        ``remove_ghosts``, the copies made by a second tip apex are dropped, or moved onto the real
        feature when the network marked the copy alone (:mod:`.double_tip`; ``ghost_method`` "image":
        :func:`.resolve_double_tip`, for a network that marks mostly the real copy, as the shipped
        UNets do; "pairs": :func:`.resolve_marked_both`, for one that marks both copies alike).
        Components whose mean probability is below ``min_score`` are left out first."""
        components, _ = find_components(prob, self.threshold, self.min_area_px, prepared.valid)
        components = [c for c in components if c.score >= self.min_score]
        self.last_double_tip = None
        self.last_warnings = []
        if self.remove_ghosts and components:
            points = np.array([(c.row, c.col) for c in components])
            if self.ghost_method == "pairs":
                found = resolve_marked_both(points, prepared.image[0], prepared.valid, nm_per_px=self.surface.nm_per_px)
            else:
                found = resolve_double_tip(points, np.array([c.score * c.area for c in components]),
                                           prepared.image[0], prepared.valid, nm_per_px=self.surface.nm_per_px)
            if found is not None:
                for k, row, col in found.moved:
                    components[k] = dataclasses.replace(components[k], row=row, col=col)
                ghosts = set(found.ghosts)
                components = [c for k, c in enumerate(components) if k not in ghosts]
                self.last_double_tip = found
                self.last_warnings.append(found.describe(self.surface.nm_per_px))
                log.info("%s: %s (found from the %s)", scan.name, self.last_warnings[-1], found.method)
        return defects_at(scan, prepared, components)

    def resolves(self, scan: Scan) -> bool:
        """Whether ``scan``'s pixels are fine enough (``max_nm_per_px`` on both axes) for the UNet
        (:func:`too_coarse`)."""
        return too_coarse(scan, self.max_nm_per_px) is None

    def segment(self, scan: Scan) -> list[Defect]:
        """Every defect in ``scan`` (see the module docstring); none, with a warning, for a scan
        too coarse to resolve defects (:meth:`resolves`)."""
        self.last_double_tip, self.last_warnings = None, []
        if coarse := too_coarse(scan, self.max_nm_per_px):
            warning = f"{coarse}, none reported"
            log.info("%s: %s", scan.name, warning)  # the Analysis carries it to the user
            self.last_warnings = [warning]
            self.last_timing_ms = {"preprocess": 0.0}
            self.last_probability = self.last_prepared = None
            return []
        t0 = time.perf_counter()
        prepared = prepare(scan, self.surface, self.preprocess)
        t1 = time.perf_counter()
        prob = self.probability(prepared)
        defects = self.defects_from(scan, prepared, prob)
        self.last_timing_ms = {"preprocess": (t1 - t0) * 1e3}
        self.last_probability = prob
        self.last_prepared = prepared
        log.debug("%s: %d defects, preprocess %.1f ms, segment %.1f ms", scan.name, len(defects),
                  (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)
        return defects
