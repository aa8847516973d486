"""Preprocessing of STM frames: plain numpy functions on display-frame arrays.

Every image here is a 2-D ``(rows, columns)`` array in the *display frame* (row 0 at the top,
column 0 at the left; see ``shared/docs/conventions.md``). Heights are in whatever unit the caller
gives; :func:`prepare` converts Z from metres to nanometres first (values of ~1e-10 m are too
small for comfortable least squares in float32) and works in float64 up to the resampling, then
in float32 (its output's type; the plane fit's trimming residuals are float32 too).
NaN marks a pixel that was never measured.

The chain, in the order of ``PreprocessSettings.steps``:

``fill_nan``      :func:`fill_nan_rows` -- replace NaN, return a ``valid`` mask
``plane``         :func:`level_plane` -- robust (trimmed least squares) plane subtraction
``align_rows``    :func:`align_rows` -- per-scan-line offsets
``repair_scars``  :func:`repair_scars` -- short horizontal streaks, interpolated over
``resample``      :func:`resample` -- to the surface's fixed ``nm_per_px``
``normalise``     :func:`normalise` -- median 0, robust spread 1, clipped

:func:`prepare` runs them on the topography's forward and backward frames and returns a
:class:`Prepared` (the ``(2, H, W)`` model input and the map between model and scan pixels).
"""
from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from stmwatch.drivers.scan import Scan

from .robust import MAD_TO_SIGMA, centre_and_sigma, finite_values, median, robust_sigma
from .surfaces import Surface, get_surface

log = logging.getLogger(__name__)

STEPS = ("fill_nan", "plane", "align_rows", "repair_scars", "resample", "normalise")
ALIGN_METHODS = ("median", "median_diff")
UNIT_TO_NM = {"m": 1e9, "nm": 1.0}  # Z channel units we know how to turn into nanometres


def apparent_height(frame: np.ndarray, unit: str) -> np.ndarray:
    """A frame as an apparent height (float64, same shape): Z in nm; a tunnelling current (unit
    ``A``, a constant-height scan) as ln|I|, which grows linearly as the gap closes (I ∝ e^{-2κd}),
    so protrusions are bright whatever the bias sign; other units unchanged."""
    if unit == "A":
        magnitude = np.abs(np.asarray(frame, dtype=float))
        floor = np.nanmin(magnitude[magnitude > 0]) if np.any(magnitude > 0) else 1e-15
        return np.log(np.maximum(magnitude, floor))
    return np.multiply(frame, UNIT_TO_NM.get(unit, 1.0), dtype=float)  # one pass, float32 frames too


@dataclasses.dataclass
class PreprocessSettings:
    """The ``[preprocess]`` section of config.toml."""

    steps: list[str] = dataclasses.field(
        default_factory=lambda: ["fill_nan", "plane", "align_rows", "repair_scars", "resample", "normalise"])
    plane_trim: float = 2.5  # plane fit: residuals beyond this many robust sigmas are left out of the refit
    plane_iterations: int = 5  # plane fit: refits after the first (trimmed least squares)
    align_method: str = "median_diff"  # align_rows: "median" (row medians) | "median_diff" (Gwyddion)
    scar_threshold: float = 3.0  # repair_scars: jump to both neighbour rows, in robust sigmas of row differences
    scar_max_width: int = 2  # repair_scars: thickest scar, in scan rows
    scar_min_length: int = 16  # repair_scars: shortest scar, in scan columns
    clip: float = 6.0  # normalise: values clipped to ±clip (robust sigmas)
    max_model_px: int = 8192  # refuse scans whose model image would be larger than this on a side
    threads: int = 2  # frames (forward, backward) preprocessed at once; 1 = one after the other

    def check(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown preprocessing step(s) {unknown}; known steps are {list(STEPS)}")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"a preprocessing step is listed twice: {self.steps}")
        if not self.steps or self.steps[0] != "fill_nan":
            raise ValueError("'fill_nan' must be the first preprocessing step (later steps need finite values)")
        if "resample" not in self.steps:
            raise ValueError("'resample' must be a preprocessing step (the models need the surface's fixed scale)")
        if self.align_method not in ALIGN_METHODS:
            raise ValueError(f"align_method must be one of {ALIGN_METHODS}, not {self.align_method!r}")
        if self.plane_trim <= 0 or self.plane_iterations < 0:
            raise ValueError("plane_trim must be > 0 and plane_iterations >= 0")
        if self.scar_threshold <= 0 or self.scar_max_width < 1 or self.scar_min_length < 1:
            raise ValueError("scar_threshold must be > 0, scar_max_width and scar_min_length >= 1")
        if self.clip <= 0:
            raise ValueError("clip must be > 0")
        if self.max_model_px < 1:
            raise ValueError("max_model_px must be >= 1")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")


# ---- small helpers ---------------------------------------------------------------------------
def _masked(image: np.ndarray, use: np.ndarray) -> np.ndarray:
    """``image[use]`` flattened, without a copy when every pixel is used."""
    return image.ravel() if use.all() else image[use]


def _valid_median(image: np.ndarray, valid: np.ndarray | None) -> float:
    values = _masked(image, valid) if valid is not None else finite_values(image)
    return median(values) if values.size else 0.0


def _neutralise(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Set the invalid pixels to the median of the valid ones, so they pull no step either way."""
    if not valid.all():
        image = image.copy()
        image[~valid] = _valid_median(image, valid)
    return image


def _use(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The pixels a step may use: finite, and True in ``mask`` when one is given."""
    finite = np.isfinite(image)
    return finite if mask is None else (np.asarray(mask, bool) & finite)


# ---- fill_nan --------------------------------------------------------------------------------
def fill_nan_rows(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace missing (NaN or infinite) pixels; return ``(filled, valid)``.

    ``image`` is ``(rows, columns)`` in the display frame. An aborted scan misses whole lines at
    the end of acquisition: at the *bottom* for a ``down`` scan and at the *top* for an ``up``
    scan (its first line is acquired at the bottom). Whole missing rows, wherever they are, get
    the median of all valid pixels; an isolated missing pixel gets the median of its row's valid
    pixels. ``valid`` is a ``(rows, columns)`` bool mask, False exactly where ``image`` was not
    finite. An image with no valid pixel comes back as zeros. ``filled`` is a new float64 array.
    """
    filled = np.array(image, dtype=float)
    valid = np.isfinite(filled)
    if valid.all():
        return filled, valid
    global_median = _valid_median(filled, valid)
    for r in np.flatnonzero(~valid.all(axis=1)):
        row_valid = valid[r]
        fill = median(filled[r, row_valid]) if row_valid.any() else global_median
        filled[r, ~row_valid] = fill
    return filled, valid


# ---- plane -----------------------------------------------------------------------------------
def _plane_axes(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of the plane fit, centred and scaled to [-1, 1]."""
    rows, cols = shape
    y = np.linspace(-1.0, 1.0, rows) if rows > 1 else np.zeros(1)
    x = np.linspace(-1.0, 1.0, cols) if cols > 1 else np.zeros(1)
    return y, x


def _plane_sums(image: np.ndarray, keep: np.ndarray | None, y: np.ndarray, x: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The 3×3 normal matrix and right-hand side of the least-squares plane ``z = a + b·x + c·y``
    over the ``keep`` pixels (``None``: all): their sums come from two matrix products of the image
    (and the mask) with the columns ``1, x, x²``, then weighted by ``1, y, y²`` over the rows, so
    the cost is a few passes over the image and no design matrix is built."""
    powers = np.stack([np.ones_like(x), x, x * x], axis=1)  # (columns, 3)
    if keep is None:
        per_row = np.broadcast_to(powers.sum(axis=0), (len(y), 3))  # n, Σx, Σx² of every row
        z = image
    else:
        per_row = keep.astype(float) @ powers
        z = np.where(keep, image, 0.0)
    z_row = z @ powers[:, :2]  # Σz, Σz·x of every row
    n, sx, sxx = per_row.sum(axis=0)
    sy, sxy = y @ per_row[:, :2]
    syy = per_row[:, 0] @ (y * y)
    sz, szx = z_row.sum(axis=0)
    normal = np.array([[n, sx, sy], [sx, sxx, sxy], [sy, sxy, syy]])
    return normal, np.array([sz, szx, z_row[:, 0] @ y])


def _point_sums(image: np.ndarray, flat: np.ndarray, y: np.ndarray, x: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_plane_sums` over the pixels at the flat indices ``flat`` only."""
    rows, cols = np.divmod(flat, image.shape[1])
    xs, ys, zs = x[cols], y[rows], image.ravel()[flat]
    sx, sy, sxy = xs.sum(), ys.sum(), xs @ ys
    normal = np.array([[float(flat.size), sx, sy], [sx, xs @ xs, sxy], [sy, sxy, ys @ ys]])
    return normal, np.array([zs.sum(), zs @ xs, zs @ ys])


def _solve_plane(normal: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``(a, b, c)`` from the normal equations; a degenerate set of pixels (one row, one column)
    gets the minimum-norm solution, as ``lstsq`` on the pixels would give."""
    coef, *_ = np.linalg.lstsq(normal, rhs, rcond=1e-12)
    return coef


def _evaluate_plane(coef: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return coef[0] + coef[1] * x[None, :] + coef[2] * y[:, None]


def fit_plane(image: np.ndarray, mask: np.ndarray | None = None, *, trim: float = 2.5,
              iterations: int = 5) -> np.ndarray:
    """Robust plane ``z = a + b·col + c·row`` through ``image``; returns the plane, same shape.

    Trimmed least squares: fit, drop the pixels whose residual is more than ``trim`` robust
    sigmas from the median residual (defects, adsorbates, a second terrace), refit on the rest,
    ``iterations`` times. ``mask`` (bool, True = use) leaves pixels out altogether. Coordinates
    are centred and scaled to [-1, 1] so the fit is well conditioned whatever the image size.
    Each fit solves the 3×3 normal equations: their sums over all used pixels are taken once
    (:func:`_plane_sums`), a refit subtracts those of the dropped pixels (:func:`_point_sums`,
    a few per cent of the image). The residual's distance to its median serves both the robust
    sigma (its median) and the trimming; residuals are float32 (they only decide which pixels
    are kept; a pixel within float32 rounding of the limit may go either way), sums float64.
    """
    image = np.asarray(image, dtype=float)
    use = _use(image, mask)
    all_used = bool(use.all())
    y, x = _plane_axes(image.shape)
    n_keep = image.size if all_used else int(np.count_nonzero(use))
    if n_keep < 3:  # too few pixels for a plane: a constant
        return np.full(image.shape, median(image[use]) if n_keep else 0.0)
    keep = None if all_used else use  # None: every pixel
    base = _plane_sums(image, keep, y, x)
    normal, rhs = base
    image32 = image.astype(np.float32)
    residual = np.empty(image.shape, dtype=np.float32)
    coef = np.zeros(3)
    for iteration in range(iterations + 1):
        coef = _solve_plane(normal, rhs)
        if iteration == iterations:
            break
        np.subtract(image32, (coef[0] + coef[1] * x).astype(np.float32), out=residual)  # minus the plane
        residual -= (coef[2] * y)[:, None].astype(np.float32)
        centre = median(_masked(residual, use))
        np.subtract(residual, centre, out=residual)
        np.abs(residual, out=residual)  # distance to the median residual
        mad = median(_masked(residual, use))
        if mad > 0:
            spread = MAD_TO_SIGMA * mad
        else:  # more than half the residuals equal: the ordinary standard deviation (robust_sigma)
            spread = float(np.std(_masked(image - _evaluate_plane(coef, y, x), use)))
        if spread == 0:
            break
        new_keep = residual <= np.float32(trim * spread)
        if not all_used:
            new_keep &= use
        if np.count_nonzero(new_keep) < 3 or (keep is None and new_keep.all()) or (
                keep is not None and np.array_equal(new_keep, keep)):
            break
        keep = new_keep
        dropped = _point_sums(image, np.flatnonzero(use & ~keep if not all_used else ~keep), y, x)
        normal, rhs = base[0] - dropped[0], base[1] - dropped[1]
    return _evaluate_plane(coef, y, x)


def level_plane(image: np.ndarray, mask: np.ndarray | None = None, *, trim: float = 2.5,
                iterations: int = 5) -> np.ndarray:
    """``image`` minus its robust plane (:func:`fit_plane`); same shape and units."""
    image = np.asarray(image, dtype=float)
    return image - fit_plane(image, mask, trim=trim, iterations=iterations)


# ---- align_rows ------------------------------------------------------------------------------
def row_offsets(image: np.ndarray, method: str = "median_diff", mask: np.ndarray | None = None) -> np.ndarray:
    """Per-row offsets ``(rows,)`` of a ``(rows, columns)`` image, in the image's units.

    ``"median"``: each row's median. ``"median_diff"`` (Gwyddion's *median of differences*):
    the median of ``row[i] - row[i-1]`` over the columns, summed down the image, so that a
    feature whose share of the row changes from row to row (a terrace step running across the
    image, a large island) is kept where row medians would jump, and a defect covering part of
    a row does not move it. Neither method can tell a line offset from a height change that is
    the same all along a row (atomic rows exactly parallel to the fast scan): both remove it. Rows with no valid pixel (``mask``)
    get no offset of their own. The offsets have mean 0 over the rows that have valid pixels.
    Rows (pairs of rows) with every pixel valid are done together, the others one by one.
    """
    if method not in ALIGN_METHODS:
        raise ValueError(f"align method must be one of {ALIGN_METHODS}, not {method!r}")
    image = np.asarray(image, dtype=float)
    use = _use(image, mask)
    rows = image.shape[0]
    has_data = use.any(axis=1)
    full = use.all(axis=1)
    offsets = np.zeros(rows)
    if method == "median":
        if full.any():
            offsets[full] = median(image[full], axis=1)
        for r in np.flatnonzero(has_data & ~full):
            offsets[r] = median(image[r, use[r]])
    else:
        steps = np.zeros(rows)
        with_data = np.flatnonzero(has_data)  # a run of missing rows is bridged
        current, previous = with_data[1:], with_data[:-1]
        both_full = full[current] & full[previous]
        if both_full.all() and with_data.size == rows:
            if rows > 1:
                steps[1:] = median(image[1:] - image[:-1], axis=1, overwrite=True)
        else:
            pairs = np.flatnonzero(both_full)
            if pairs.size:
                steps[current[pairs]] = median(image[current[pairs]] - image[previous[pairs]], axis=1, overwrite=True)
            for r, p in zip(current[~both_full], previous[~both_full]):
                both = use[r] & use[p]
                if both.any():
                    steps[r] = median(image[r, both] - image[p, both])
        offsets = np.cumsum(steps)
        # rows without data carry the offset of the row before them; it is irrelevant anyway
    if has_data.any():
        offsets = offsets - offsets[has_data].mean()
    return offsets


def align_rows(image: np.ndarray, method: str = "median_diff", mask: np.ndarray | None = None) -> np.ndarray:
    """``image`` with :func:`row_offsets` subtracted from each row; same shape and units."""
    image = np.asarray(image, dtype=float)
    return image - row_offsets(image, method, mask)[:, None]


# ---- repair_scars ----------------------------------------------------------------------------
def find_scars(image: np.ndarray, threshold: float = 3.0, max_width: int = 2, min_length: int = 16,
               mask: np.ndarray | None = None) -> np.ndarray:
    """Bool ``(rows, columns)`` mask of scan-line scars.

    A scar is a block of 1 to ``max_width`` consecutive rows that, over at least ``min_length``
    consecutive columns, lies more than ``threshold`` × σ above (or below) *both* the row just
    above and the row just below the block, where σ is the robust spread of the differences
    between neighbouring rows. The first and last rows (one neighbour only) are never scars;
    pixels outside ``mask`` are never part of one, nor used as a neighbour. Every block position
    of one width is tested at once (whole-image array operations).
    """
    image = np.asarray(image, dtype=float)
    rows, cols = image.shape
    use = _use(image, mask)
    scars = np.zeros((rows, cols), dtype=bool)
    if rows < 3:
        return scars
    if max_width >= rows - 1:
        max_width = rows - 2
    # D[k] = image[k:] - image[:-k]; a block row above (below) a neighbour by more than the limit
    # is D > limit (D < -limit) for the right k, since fl(a - b) = -fl(b - a) and rounding keeps
    # the order (min over the block of block - above > limit <=> every row's difference is)
    diffs = {k: image[k:] - image[:-k] for k in range(1, max_width + 1)}
    all_used = use.all()
    sigma = centre_and_sigma(diffs[1].ravel())[1] if all_used else robust_sigma(diffs[1][use[1:] & use[:-1]])
    if sigma == 0:
        return scars
    limit = threshold * sigma
    above_by = {k: d > limit for k, d in diffs.items()}
    below_by = {k: d < -limit for k, d in diffs.items()}
    for width in range(1, max_width + 1):
        n = rows - width - 1  # blocks whose top row t is 1 .. rows - width - 1
        up = np.ones((n, cols), bool)
        down = np.ones((n, cols), bool)
        for j in range(width):  # block row t + j against row t - 1 (above) and row t + width (below)
            up &= above_by[j + 1][:n] & below_by[width - j][1 + j:1 + j + n]
            down &= below_by[j + 1][:n] & above_by[width - j][1 + j:1 + j + n]
        hit = up | down
        if not all_used:
            for j in range(-1, width + 1):
                hit &= use[1 + j:1 + j + n]
        blocks = np.flatnonzero(np.count_nonzero(hit, axis=1) >= min_length)  # only these can hold a scar
        if not blocks.size:
            continue
        edges = np.diff(np.pad(hit[blocks], ((0, 0), (1, 1))).astype(np.int8), axis=1)
        starts, stops = np.nonzero(edges == 1), np.nonzero(edges == -1)[1]  # row-major: paired in order
        for block, start, stop in zip(blocks[starts[0]], starts[1], stops):
            if stop - start >= min_length:
                scars[1 + block:1 + block + width, start:stop] = True
    return scars


def repair_scars(image: np.ndarray, threshold: float = 3.0, max_width: int = 2, min_length: int = 16,
                 mask: np.ndarray | None = None, *, copy: bool = True) -> np.ndarray:
    """``image`` with the scars of :func:`find_scars` replaced by linear interpolation, column by
    column, between the nearest unscarred rows above and below (``np.interp``'s arithmetic, all
    scarred pixels at once); same shape and units. ``copy=False``: a float64 ``image`` without
    scars comes back as itself, and one with scars is repaired in place."""
    image = np.asarray(image, dtype=float)
    scars = find_scars(image, threshold, max_width, min_length, mask)
    if not scars.any():
        return image.copy() if copy else image
    repaired = image.copy() if copy else image
    rows = image.shape[0]
    columns = np.flatnonzero(scars.any(axis=0))
    scarred = scars[:, columns]
    index = np.arange(rows)[:, None]
    above = np.maximum.accumulate(np.where(scarred, -1, index), axis=0)
    below = np.minimum.accumulate(np.where(scarred, rows, index)[::-1], axis=0)[::-1]
    r, k = np.nonzero(scarred)
    c = columns[k]
    lo, hi = above[r, k], below[r, k]
    lo, hi = np.where(lo < 0, hi, lo), np.where(hi >= rows, lo, hi)  # beyond the last good row: its value
    z_lo, z_hi = image[lo, c], image[hi, c]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(hi > lo, (z_hi - z_lo) / (hi - lo), 0.0)
    repaired[r, c] = slope * (r - lo) + z_lo
    return repaired


# ---- combine_directions ----------------------------------------------------------------------
def combine_directions(forward: np.ndarray | None, backward: np.ndarray | None) -> np.ndarray:
    """One frame from a forward and a backward frame (both ``(rows, columns)``, display frame).

    The backward frame is shifted by the median of ``forward - backward`` (the two directions
    often differ by a constant), then the two are averaged pixel by pixel; where one is NaN the
    other is used, where both are NaN the result is NaN. Either frame may be ``None``.
    """
    if forward is None and backward is None:
        raise ValueError("combine_directions needs at least one frame")
    if forward is None or backward is None:
        return np.asarray(forward if forward is not None else backward, dtype=float).copy()
    forward = np.asarray(forward, dtype=float)
    backward = np.asarray(backward, dtype=float)
    both = np.isfinite(forward) & np.isfinite(backward)
    if both.any():
        backward = backward + float(np.median(forward[both] - backward[both]))
    stacked = np.stack([forward, backward])
    count = np.isfinite(stacked).sum(axis=0)
    total = np.where(np.isfinite(stacked), stacked, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ---- resample --------------------------------------------------------------------------------
def _bilinear_axis(image: np.ndarray, scale: float, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis``: output ``i`` samples input ``(i + 0.5)·scale - 0.5``
    (clamped to the first/last input pixel)."""
    n = image.shape[axis]
    position = np.clip((np.arange(size) + 0.5) * scale - 0.5, 0.0, n - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, n - 1)
    weight = position - lower
    shape = [1, 1]
    shape[axis] = size
    weight = weight.reshape(shape).astype(image.dtype)
    out = np.take(image, lower, axis=axis)
    out *= 1 - weight
    above = np.take(image, upper, axis=axis)
    above *= weight
    out += above
    return out


def _area_axis(image: np.ndarray, scale: float, size: int, axis: int) -> np.ndarray:
    """Area average along ``axis``: output ``i`` is the mean of the input over pixel edges
    ``[i·scale, (i+1)·scale]`` (input pixel ``k`` spans ``[k, k+1]``), from a cumulative sum."""
    n = image.shape[axis]
    moved = np.moveaxis(image, axis, 0)
    cumulative = np.concatenate([np.zeros((1,) + moved.shape[1:]), np.cumsum(moved, axis=0)])
    edges = np.clip(np.arange(size + 1) * scale, 0.0, n)
    lower = np.minimum(np.floor(edges).astype(int), n - 1)
    fraction = (edges - lower)[(slice(None),) + (None,) * (moved.ndim - 1)]
    # the integral from 0 to an edge: whole pixels below it plus a fraction of the next one
    integral = cumulative[lower] + fraction * moved[lower]
    widths = np.diff(edges)[(slice(None),) + (None,) * (moved.ndim - 1)]
    out = (integral[1:] - integral[:-1]) / np.where(widths > 0, widths, 1.0)
    return np.moveaxis(out, 0, axis)


def resample(image: np.ndarray, scale_rows: float, scale_cols: float,
             shape: tuple[int, int] | None = None, dtype=np.float64) -> np.ndarray:
    """Resample a ``(rows, columns)`` image; ``scale_*`` are *input pixels per output pixel*.

    Output pixel ``(r, c)`` has its centre at input pixel coordinate
    ``((r + 0.5)·scale_rows - 0.5, (c + 0.5)·scale_cols - 0.5)`` (an integer coordinate is an
    input pixel centre). Each axis is interpolated linearly, or, when it shrinks by more than
    1.5× (``scale > 1.5``), area-averaged over the output pixel's footprint so an atomic lattice
    does not alias. ``shape`` is the output ``(rows, columns)``; by default
    ``round(input size / scale)``, at least 1. Input must be finite. ``dtype``: of the arithmetic
    and the result (:func:`prepare` uses float32 from here on: its output is float32).
    """
    image = np.asarray(image, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"resample wants a (rows, columns) image, not shape {image.shape}")
    if scale_rows <= 0 or scale_cols <= 0:
        raise ValueError("resample scales must be > 0")
    if shape is None:
        shape = (max(1, round(image.shape[0] / scale_rows)), max(1, round(image.shape[1] / scale_cols)))
    out = image
    for axis, (scale, size) in enumerate(zip((scale_rows, scale_cols), shape)):
        if scale == 1.0 and size == image.shape[axis]:
            continue  # interpolation at the input's own pixel centres: the values themselves
        if scale > 1.5:  # cumulative sums: float64 whatever the dtype
            out = _area_axis(out.astype(float, copy=False), scale, size, axis)
        else:
            out = _bilinear_axis(out.astype(dtype, copy=False), scale, size, axis)
    return out.astype(dtype, copy=False) if out is not image else image.astype(dtype)


# ---- normalise -------------------------------------------------------------------------------
def normalise(image: np.ndarray, valid: np.ndarray | None = None, clip: float = 6.0,
              dtype=np.float64) -> np.ndarray:
    """``(image - median) / spread`` clipped to ``±clip``; invalid pixels become 0.

    Median and spread (1.4826 × MAD, see :func:`robust_sigma`) are taken over the ``valid``
    pixels. A constant image (spread 0) comes back as zeros. Dimensionless output, same shape,
    ``dtype`` (also that of the arithmetic).
    """
    image = np.asarray(image, dtype=dtype)
    use = _use(image, valid)
    all_used = bool(use.all())
    if not all_used and not use.any():
        return np.zeros(image.shape, dtype)
    values = _masked(image, use)
    centre = median(values)
    out = image - centre  # the deviations: their absolute median is the MAD (centre_and_sigma)
    mad = median(np.abs(_masked(out, use)), overwrite=True)
    spread = MAD_TO_SIGMA * mad if mad > 0 else float(values.std())
    if spread == 0:
        return np.zeros(image.shape, dtype)
    out /= spread
    np.clip(out, -clip, clip, out=out)
    if not all_used:
        out[~use] = 0.0
    return out


# ---- the whole chain -------------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    """A scan ready for the models.

    ``image`` is ``(channels, H, W)`` float32 at the surface's ``nm_per_px`` (forward and backward
    topography), ``valid`` ``(H, W)`` bool (False where the scan had no data), ``scale`` the
    ``(rows, columns)`` size of one model pixel in scan pixels, ``surface`` the surface key.
    Model pixel ``(r, c)`` has its centre at scan pixel ``((r + 0.5)·scale[0] - 0.5,
    (c + 0.5)·scale[1] - 0.5)`` (both display frame, integer = pixel centre).
    """

    image: np.ndarray
    valid: np.ndarray
    scale: tuple[float, float]
    surface: str

    def to_scan(self, row, col) -> tuple[np.ndarray, np.ndarray]:
        """Model pixel ``(row, col)`` → scan display-frame pixel ``(row, col)``; scalars or arrays."""
        scan_row = (np.asarray(row, dtype=float) + 0.5) * self.scale[0] - 0.5
        scan_col = (np.asarray(col, dtype=float) + 0.5) * self.scale[1] - 0.5
        return scan_row, scan_col

    def from_scan(self, row, col) -> tuple[np.ndarray, np.ndarray]:
        """Scan display-frame pixel ``(row, col)`` → model pixel ``(row, col)``; the inverse of
        :meth:`to_scan`."""
        model_row = (np.asarray(row, dtype=float) + 0.5) / self.scale[0] - 0.5
        model_col = (np.asarray(col, dtype=float) + 0.5) / self.scale[1] - 0.5
        return model_row, model_col


def model_shape(scan: Scan, surface: Surface) -> tuple[int, int]:
    """``(rows, columns)`` of the model image: the frame's height and width in nm divided by
    ``surface.nm_per_px``, rounded, at least 1."""
    width_nm, height_nm = (r * 1e9 for r in scan.range_m)
    return (max(1, round(height_nm / surface.nm_per_px)), max(1, round(width_nm / surface.nm_per_px)))


def prepare(scan: Scan, surface: Surface | str, settings: PreprocessSettings | None = None) -> Prepared:
    """Run the preprocessing chain on the scan's topography; see the module docstring.

    The topography's forward and backward frames (a channel recorded one way only is used
    twice) go through ``settings.steps`` one by one and are stacked into a ``(2, H, W)``
    float32 image, ``(H, W) = model_shape(scan, surface)``. Z in metres is worked on in nm.
    ``valid`` is False where either frame had no data; those pixels hold the median (0 after
    ``normalise``). Raises ValueError for a scan too large for ``settings.max_model_px``.
    """
    settings = settings or PreprocessSettings()
    settings.check()
    if isinstance(surface, str):
        surface = get_surface(surface)
    rows_out, cols_out = model_shape(scan, surface)
    if max(rows_out, cols_out) > settings.max_model_px:
        raise ValueError(
            f"{scan.name}: a {scan.range_m[0] * 1e9:g} × {scan.range_m[1] * 1e9:g} nm frame at "
            f"{surface.nm_per_px} nm/px is {cols_out} × {rows_out} px, more than max_model_px "
            f"= {settings.max_model_px}")
    rows_in, cols_in = scan.shape
    scale = (rows_in / rows_out, cols_in / cols_out)

    channel = scan.topography()
    frames = channel.frames()
    if not frames:
        raise ValueError(f"{scan.name}: channel {channel.name} has no frames")
    if len(frames) == 1:
        frames = frames * 2

    sample = 16 if {"plane", "align_rows", "normalise"} & set(settings.steps) else 1

    def fill(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = apparent_height(frame, channel.unit)  # a new float64 array: ours to change
        finite = np.isfinite(image)
        all_finite = bool(finite.all())
        if all_finite or finite.any():
            # remove the big absolute Z before any fit; where a later step removes a constant
            # (plane, row alignment, normalisation), any height near the middle will do: the
            # median of every 16th pixel (the result changes by float64 rounding only)
            image -= median(_masked(image, finite)[::sample])
        return (image, finite) if all_finite else fill_nan_rows(image)

    def chain(index: int, image: np.ndarray) -> None:
        current_valid = valid
        image = _neutralise(image, valid)
        for step in settings.steps[1:]:
            if step == "plane":
                image = level_plane(image, current_valid, trim=settings.plane_trim,
                                    iterations=settings.plane_iterations)
            elif step == "align_rows":
                image = align_rows(image, settings.align_method, current_valid)
            elif step == "repair_scars":  # the image is a temporary of this chain: repaired in place
                image = repair_scars(image, settings.scar_threshold, settings.scar_max_width,
                                     settings.scar_min_length, current_valid, copy=False)
            elif step == "resample":  # float32 from here: the model input is float32
                image = resample(image, scale[0], scale[1], (rows_out, cols_out), np.float32)
                current_valid = resampled_valid
            elif step == "normalise":
                image = normalise(image, current_valid, settings.clip, np.float32)
            image = _neutralise(image, current_valid)
        stacked[index] = image  # float32

    stacked = np.empty((len(frames), rows_out, cols_out), dtype=np.float32)
    # the frames are independent: numpy releases the GIL in its array loops, so threads overlap
    workers = max(1, min(settings.threads, len(frames)))
    with ThreadPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        filled = list(pool.map(fill, frames))
        valid = np.logical_and.reduce([frame_valid for _, frame_valid in filled])
        if valid.all():  # resampled, a mask of ones stays all True: no need to resample it
            resampled_valid = np.ones((rows_out, cols_out), dtype=bool)
        else:
            resampled_valid = resample(valid.astype(float), scale[0], scale[1], (rows_out, cols_out)) > 0.5
        model_valid = resampled_valid  # resample is always a step (check())
        list(pool.map(chain, range(len(frames)), [image for image, _ in filled]))

    if not np.isfinite(stacked).all():  # cannot happen for finite input; never hand NaN on
        log.warning("%s: non-finite values after preprocessing, set to 0", scan.name)
        stacked = np.nan_to_num(stacked, nan=0.0, posinf=0.0, neginf=0.0)
    return Prepared(image=stacked, valid=model_valid, scale=scale, surface=surface.key)


class _Inline:
    """A stand-in for a one-thread pool: ``map`` in the calling thread (no thread to start)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, *iterables):
        return map(fn, *iterables)
