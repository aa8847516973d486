"""The STM simulator: realistic ``.sxm`` scans of known surfaces with their ground truth.

Used for training (the UNet and the few-shot classifier), for tests, and by ``stmwatch simulate``.

How a scan is made (:func:`simulate_scan`):
1. The geometry is a :class:`~stmwatch.drivers.scan.Scan`; every pixel's nominal scanner position
   comes from ``Scan.pixel_to_scanner`` (so the angle, offset and direction are honoured by
   construction).
2. Drift and creep (:mod:`.artefacts`) move the sample under the tip as the frame is acquired;
   the sample point seen by each pixel is its scanner position minus that displacement.
3. The surface (:mod:`.sample`: steps, lattice, domains, defects at real nm scale) is rendered
   at those sample points, for the forward frame and for the backward one (which hysteresis may
   shift), through the tip (blur, double apex, a tip change part way).
4. Height artefacts (tilt, line offsets, 1/f and white noise, scars) are added in acquisition
   order, lines never acquired (an aborted scan) are NaN, and heights become metres.
5. The truth: each defect's pixel is where its *sample* position is seen in the forward frame
   (following drift and creep), its metres are ``Scan.pixel_to_scanner`` of that pixel, and the
   mask marks the forward pixels whose sample point lies in a defect's footprint.

Units: nm inside the simulator, metres in the Scan and in the truth's ``x_m``/``y_m``. Arrays are
``(rows, columns)`` in the display frame (``shared/docs/conventions.md``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import nanonis_columns, nanonis_number, write_sxm, z_controller_table

from ..robust import robust_sigma
from ..surfaces import SURFACES, get_surface
from . import artefacts as art
from .artefacts import AcquisitionOrder, Artefacts, Tip
from .sample import DEFECTS, PointIndex, SurfaceModel, defect_mask, draw_bumps, draw_surface, place_defect, render
from .truth import Truth, TruthDefect

log = logging.getLogger(__name__)

__all__ = ["Artefacts", "Truth", "TruthDefect", "simulate_scan", "write_example", "read_truth", "make_dataset",
           "make_crops", "apply_noise", "to_png", "scan_source", "training_scan"]

apply_noise = art.apply_noise

# ---- ground truth: Truth, TruthDefect (in .truth, shared with the foreign style) ------------------


# ---- the simulation ----------------------------------------------------------------------------


def default_bias(surface: str, rng: np.random.Generator) -> float:
    """A typical imaging bias (V): filled (negative) or empty (positive) states at random on Si
    and Ge, filled states only on TiO2(110)."""
    if get_surface(surface).filled_only:
        return -float(np.round(rng.uniform(0.8, 2.0), 2))
    return float(np.round(rng.choice([-1.0, 1.0]) * rng.uniform(1.2, 2.2), 2))


def _place_defects(model: SurfaceModel, geometry: Scan, rng: np.random.Generator, n: int,
                   place: Sequence[tuple[str, float, float]]) -> None:
    """Put the ``place`` defects (class, x nm, y nm) and then ``n`` random ones on the sample,
    never overlapping (footprints at least 0.4 nm apart)."""
    classes = model.surface.classes
    weights = rng.dirichlet(np.full(len(classes), 2.0))
    ny, nx = geometry.shape
    placed = model.defects
    xy = np.zeros((0, 2))
    radii = np.zeros(0)

    def try_add(cls: str, x: float, y: float) -> bool:
        nonlocal xy, radii
        d = place_defect(model, cls, x, y, rng)
        if d is None:
            return False
        if len(placed) and np.any(np.hypot(xy[:, 0] - d.x, xy[:, 1] - d.y) < radii + d.radius + 0.4):
            return False
        placed.append(d)
        xy = np.vstack([xy, [d.x, d.y]])
        radii = np.append(radii, d.radius)
        return True

    for cls, x, y in place:
        if cls not in classes:
            raise ValueError(f"{model.surface.key} has no defect class {cls!r}; classes are {classes}")
        for attempt in range(30):  # a step edge or a neighbour in the way: nudge it
            jitter = rng.normal(0, 0.25 * attempt, 2) if attempt else (0.0, 0.0)
            if try_add(cls, x + jitter[0], y + jitter[1]):
                break
    added = 0
    for _ in range(20 * n):
        if added >= n:
            break
        r, c = rng.uniform(-2, ny + 1), rng.uniform(-2, nx + 1)
        x, y = geometry.pixel_to_scanner(r, c)
        if try_add(str(rng.choice(classes, p=weights)), float(x) * 1e9, float(y) * 1e9):
            added += 1


def _render_tip(model: SurfaceModel, sx: np.ndarray, sy: np.ndarray, filled: bool, tip: Tip) -> np.ndarray:
    """Height (nm) recorded through ``tip`` at sample points ``sx, sy`` (nm)."""
    z = render(model, sx, sy, filled, tip.blur)
    if tip.double is not None:
        z2 = render(model, sx + tip.double[0], sy + tip.double[1], filled, tip.blur)
        z = art.combine_double(z, z2, tip.drop)
    if tip.gain != 1.0:
        steps = model.steps.topography(sx, sy)
        z = steps + tip.gain * (z - steps)
    return z + tip.jump


def simulate_scan(surface: str, seed: int, *, pixels: tuple[int, int] = (256, 256),
                  range_nm: float | tuple[float, float] | None = None, offset_m: tuple[float, float] = (0.0, 0.0),
                  angle_deg: float = 0.0, direction: str = "down", bias_v: float | None = None,
                  n_defects: int | None = None, artefacts: Artefacts | None = None,
                  place: Sequence[tuple[str, float, float]] = (), style: str = "training") -> tuple[Scan, Truth]:
    """Simulate one STM scan of ``surface`` (a key of ``SURFACES``) and its ground truth.

    ``style`` "training" is the simulator the models learn from; "foreign" is another microscope
    (:mod:`.foreign`, frozen, for measuring only: it has its own artefacts, so ``artefacts`` and
    ``place`` are ignored there).

    ``pixels`` is ``(columns, rows)`` as ``Scan.pixels``; ``range_nm`` the frame's width (or
    ``(width, height)``) in nm, by default 0.1 nm per pixel; ``offset_m`` its centre (metres) and
    ``angle_deg`` its rotation (clockwise), as Nanonis. ``bias_v`` None picks filled or empty
    states at random (filled only for TiO2(110)). ``n_defects`` None draws a count from a random
    density (0.008-0.03 per nm^2). ``place`` puts defects of the given classes at the lattice
    sites nearest the given sample positions (nm) first. The same arguments give the same bytes.

    Returns the :class:`Scan` (channels ``Z`` in m and ``Current`` in A, forward and backward,
    display frame) and its :class:`Truth`.
    """
    if style == "foreign":
        from .foreign import simulate_foreign

        return simulate_foreign(surface, seed, pixels=pixels, range_nm=range_nm, offset_m=offset_m,
                                angle_deg=angle_deg, direction=direction, bias_v=bias_v, n_defects=n_defects)
    if style != "training":
        raise ValueError(f"unknown simulator style {style!r}; styles are 'training' and 'foreign'")
    surf = get_surface(surface)
    nx, ny = int(pixels[0]), int(pixels[1])
    if range_nm is None:
        width, height = nx * surf.nm_per_px, ny * surf.nm_per_px
    elif np.ndim(range_nm) == 0:
        width, height = float(range_nm), float(range_nm) * ny / nx
    else:
        width, height = float(range_nm[0]), float(range_nm[1])
    artefacts = artefacts or Artefacts.none()
    rng = np.random.default_rng([seed, 1])
    if bias_v is None:
        bias_v = default_bias(surface, rng)
    filled = bias_v < 0 or surf.filled_only
    geometry = Scan(channels=[], pixels=(nx, ny), range_m=(width * 1e-9, height * 1e-9),
                    offset_m=(float(offset_m[0]), float(offset_m[1])), angle_deg=float(angle_deg),
                    direction=direction, bias_v=float(bias_v))

    # Nominal scanner positions (nm) of every pixel; the backward trace lags by the hysteresis.
    rows, cols = np.mgrid[0:ny, 0:nx]
    px, py = (v * 1e9 for v in geometry.pixel_to_scanner(rows, cols))
    theta = math.radians(angle_deg)
    lag = art.hysteresis_shift(artefacts, seed, nx, width / nx)[None, :]
    bx, by = px + lag * math.cos(theta), py - lag * math.sin(theta)

    # The sample moves under the tip: sample point = scanner position - displacement(t).
    acq = AcquisitionOrder(ny, nx, direction)
    t_fwd, t_bwd = acq.times()
    motion = art.draw_motion(artefacts, seed, max(width, height))
    dfx, dfy = motion.shift(t_fwd)
    dbx, dby = motion.shift(t_bwd)
    sfx, sfy, sbx, sby = px - dfx, py - dfy, bx - dbx, by - dby

    # The sample: big enough for everything the tip visits.
    # (It must not depend on the artefacts: they are switched on and off over the same sample.)
    centre = (geometry.offset_m[0] * 1e9, geometry.offset_m[1] * 1e9)
    extent = 0.5 * math.hypot(width, height) + 0.5 * max(width, height) + 3.0
    model = draw_surface(surf, rng, centre, extent)
    model.bumps = draw_bumps(np.random.default_rng([seed, 3]), centre, 0.5 * math.hypot(width, height) + 3.0)
    def_rng = np.random.default_rng([seed, 2])
    if n_defects is None:
        n_defects = int(def_rng.poisson(def_rng.uniform(0.008, 0.03) * width * height))
    _place_defects(model, geometry, def_rng, n_defects, place)

    # Render both frames through the tip.
    tip = Tip(blur=float(rng.uniform(0.02, 0.08)))
    if artefacts.double_tip > 0:
        double, drop = art.draw_double(artefacts, art.artefact_rng(seed, "double_tip"))
        tip = dataclasses.replace(tip, double=double, drop=drop)
    z_fwd = _render_tip(model, sfx, sfy, filled, tip)
    z_bwd = _render_tip(model, sbx, sby, filled, tip)
    if artefacts.tip_change > 0:
        line, new_tip = art.draw_tip_change(artefacts, seed, ny, tip)
        after = acq.rows_after(line)
        z_fwd[after] = _render_tip(model, sfx[after], sfy[after], filled, new_tip)
        z_bwd[after] = _render_tip(model, sbx[after], sby[after], filled, new_tip)

    # Height artefacts, in acquisition order.
    frames = [z_fwd, z_bwd]
    if artefacts.tilt > 0:
        art.add_tilt(frames, [px, bx], [py, by], artefacts.tilt, seed)
    if artefacts.line_offsets > 0:
        r_lo = art.artefact_rng(seed, "line_offsets")
        per_line = art.line_offsets(artefacts.line_offsets, ny, r_lo)[acq.line()]
        z_fwd += per_line[:, None]
        z_bwd += per_line[:, None] + r_lo.normal(0, 0.003 * artefacts.line_offsets, ny)[acq.line()][:, None]
    if artefacts.noise_1f > 0:
        r_f = art.artefact_rng(seed, "noise_1f")
        seq = art.pink_noise(2 * nx * ny, r_f) * artefacts.noise_1f * r_f.uniform(0.004, 0.012)
        k_fwd, k_bwd = acq.sample_index()
        z_fwd += seq[k_fwd]
        z_bwd += seq[k_bwd]
    if artefacts.white_noise > 0:
        r_w = art.artefact_rng(seed, "white_noise")
        sigma = artefacts.white_noise * r_w.uniform(0.003, 0.01)
        z_fwd += r_w.normal(0, sigma, z_fwd.shape)
        z_bwd += r_w.normal(0, sigma, z_bwd.shape)
    if artefacts.scars > 0:
        r_s = art.artefact_rng(seed, "scars")
        art.add_scars(frames, int(r_s.poisson(4 * artefacts.scars)) + 1, artefacts.scars * 0.4, r_s)
    missing = np.zeros(ny, bool)
    if artefacts.aborted > 0:
        r_a = art.artefact_rng(seed, "aborted")
        done = float(np.clip(1.0 - artefacts.aborted * r_a.uniform(0.1, 0.8), 0.05, 0.95))
        kept = max(1, int(done * ny))  # acquisition lines completed before the stop
        missing = acq.line() >= kept
        z_fwd[missing] = np.nan
        z_bwd[missing] = np.nan

    # The tunnelling current: set point plus the feedback error where the height changes fast.
    setpoint = float(np.round(rng.uniform(20, 200))) * 1e-12 * (1 if bias_v >= 0 else -1)
    current = []
    for z, step in ((z_fwd, 1), (z_bwd, -1)):
        slope = np.gradient(z, axis=1) * step  # nm per pixel along the trace
        current.append((setpoint * (1 + 3.0 * slope + rng.normal(0, 0.01, z.shape))).astype(np.float32))

    z_offset = float(rng.uniform(-30, 30))  # nm: where the piezo happened to sit
    z_chan = Channel("Z", "m", ((z_fwd + z_offset) * 1e-9).astype(np.float32),
                     ((z_bwd + z_offset) * 1e-9).astype(np.float32), index=14)
    i_chan = Channel("Current", "A", current[0], current[1], index=0)
    scan = dataclasses.replace(geometry, channels=[z_chan, i_chan],
                               acquired=dt.datetime(2025, 1, 1) + dt.timedelta(seconds=int(seed) % 10_000_000),
                               header=sim_header(f"stmwatch simulator: {surf.title}, seed {seed}", setpoint, ny))
    truth = _truth(model, scan, motion, sfx, sfy, missing, seed, artefacts)
    return scan, truth


def scan_source(surface: str, seed: int = 0, pixels: int | tuple[int, int] = 256, **kwargs):
    """A scan source for the driver simulators: ``make(index, **overrides) -> (Scan, Truth)`` is
    :func:`simulate_scan` of ``surface`` with seed ``seed + index``, ``pixels`` (an int is a
    square) and ``kwargs``, ``overrides`` replacing them for one scan."""
    shape = (pixels, pixels) if isinstance(pixels, int) else tuple(pixels)

    def make(index: int, **overrides) -> tuple[Scan, Truth]:
        return simulate_scan(surface, seed + index, pixels=shape, **{**kwargs, **overrides})

    return make


SIM_LINE_TIME_S = 0.5  # seconds per line, each direction: a typical STM scan speed for the header


def sim_header(comment: str, setpoint_a: float, lines: int) -> dict[str, str]:
    """The header keys a Nanonis controller writes that a simulated scan can fill in: the
    comment, the Z controller with its current set point (A), and the line and scan times."""
    return {"ACQ_TIME": f"{2 * lines * SIM_LINE_TIME_S:12.1f}",
            "SCAN_TIME": nanonis_columns([nanonis_number(SIM_LINE_TIME_S, 3)] * 2, 21),
            "Z-CONTROLLER": z_controller_table(nanonis_number(setpoint_a, 3, exact=False) + " A"),
            "COMMENT": comment}


def _truth(model: SurfaceModel, scan: Scan, motion: art.Motion, sfx: np.ndarray, sfy: np.ndarray,
           missing: np.ndarray, seed: int, artefacts: Artefacts) -> Truth:
    """Where each defect is seen in the forward frame, and the mask of their footprints."""
    ny, nx = scan.shape
    defects = []
    for d in model.defects:
        # The pixel that sees sample point s was at scanner position s + displacement(t), and t
        # depends on that pixel: iterate to the fixed point.
        # (The motion is slower than the scan, so the steps contract.)
        row, col = scan.scanner_to_pixel(d.x * 1e-9, d.y * 1e-9)
        for _ in range(100):
            line = row if scan.direction == "down" else ny - 1 - row
            t = (2 * line * nx + col + 0.5) / (2 * nx * ny)
            dx, dy = motion.shift(t)
            previous = row, col
            row, col = scan.scanner_to_pixel((d.x + dx) * 1e-9, (d.y + dy) * 1e-9)
            if abs(row - previous[0]) + abs(col - previous[1]) < 1e-6:
                break
        row, col = float(row), float(col)
        if not (-0.5 <= row < ny - 0.5 and -0.5 <= col < nx - 0.5):
            continue
        if missing[int(round(row))]:
            continue
        x_m, y_m = scan.pixel_to_scanner(row, col)
        defects.append(TruthDefect(d.cls, row, col, float(x_m), float(y_m), d.radius))
    mask = defect_mask(model, sfx, sfy, PointIndex(sfx, sfy))
    mask[missing] = 0
    return Truth(model.surface.key, defects, mask, scan.bias_v, seed,
                 {k: v for k, v in dataclasses.asdict(artefacts).items() if v > 0})


# ---- files -------------------------------------------------------------------------------------


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix == ".sxm" else path


def write_example(scan: Scan, truth: Truth, path: str | Path) -> Path:
    """Write ``NAME.sxm`` (via ``drivers.sxm.write_sxm``), ``NAME.truth.json`` and
    ``NAME.mask.npy``; ``path`` is ``NAME`` or ``NAME.sxm``. Returns the ``.sxm`` path."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    sxm = stem.with_name(stem.name + ".sxm")
    scan = dataclasses.replace(scan, source=sxm)
    write_sxm(scan, sxm)
    doc = {
        "surface": truth.surface,
        "classes": list(truth.classes),
        "bias_v": truth.bias_v,
        "seed": truth.seed,
        "artefacts": truth.artefacts,
        "geometry": scan.geometry(),
        "mask": stem.name + ".mask.npy",
        "defects": [
            {"cls": d.cls, "row": d.row, "col": d.col, "y_px": d.row, "x_px": d.col, "x_m": d.x_m, "y_m": d.y_m,
             "radius_nm": d.radius_nm} for d in truth.defects],
    }
    stem.with_name(stem.name + ".truth.json").write_text(json.dumps(doc, indent=1) + "\n")
    np.save(stem.with_name(stem.name + ".mask.npy"), truth.mask)
    return sxm


def read_truth(sxm_path: str | Path) -> Truth:
    """The truth written beside ``NAME.sxm`` by :func:`write_example`."""
    stem = _stem(sxm_path)
    doc = json.loads(stem.with_name(stem.name + ".truth.json").read_text())
    mask = np.load(stem.with_name(stem.name + ".mask.npy"))
    defects = [TruthDefect(d["cls"], d["row"], d["col"], d["x_m"], d["y_m"], d["radius_nm"]) for d in doc["defects"]]
    return Truth(doc["surface"], defects, mask, doc.get("bias_v"), doc.get("seed"), doc.get("artefacts", {}))


def draw_geometry(rng: np.random.Generator, pixel_range: tuple[int, int] = (256, 512)) -> dict:
    """Random scan geometry for training data: size (multiples of 32 pixels), 0.06-0.2 nm per
    pixel, angle, offset and direction; keyword arguments for :func:`simulate_scan`."""
    lo, hi = pixel_range
    steps = np.arange(lo, hi + 1, 32) if hi - lo >= 32 else np.array([lo])
    nx = int(rng.choice(steps))
    ny = nx if rng.random() < 0.7 else int(rng.choice(steps))
    nm_per_px = float(rng.uniform(0.06, 0.2))
    return {
        "pixels": (nx, ny),
        "range_nm": (nx * nm_per_px, ny * nm_per_px),
        "offset_m": tuple(float(v) for v in rng.uniform(-300e-9, 300e-9, 2)),
        "angle_deg": 0.0 if rng.random() < 0.4 else float(np.round(rng.uniform(-90, 90), 1)),
        "direction": str(rng.choice(["up", "down"])),
    }


def make_dataset(out_dir: str | Path, surface: str, n: int, seed: int, artefacts: Artefacts | None = None,
                 random_geometry: bool = True, pixel_range: tuple[int, int] = (256, 512), **kwargs) -> list[Path]:
    """Write ``n`` examples ``<out_dir>/<surface>_<seed>_<i>.sxm`` (+ truth, mask). ``artefacts``
    None draws a realistic mix per scan (:meth:`Artefacts.random`). With random geometry each scan
    gets its own size, scale, angle, offset and direction; other ``kwargs`` go to
    :func:`simulate_scan`. Returns the ``.sxm`` paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        scan_seed = int(rng.integers(0, 2**31 - 1))
        options = dict(kwargs)
        if random_geometry:
            options = {**draw_geometry(rng, pixel_range), **kwargs}
        scan_art = artefacts if artefacts is not None else Artefacts.random(rng)
        scan, truth = simulate_scan(surface, scan_seed, artefacts=scan_art, **options)
        paths.append(write_example(scan, truth, out / f"{surface}_{seed}_{i:04d}"))
        log.info("wrote %s (%d defects)", paths[-1], len(truth.defects))
    return paths


# ---- few-shot crops ----------------------------------------------------------------------------


def _plane(frame: np.ndarray) -> np.ndarray:
    """``frame`` minus its least-squares plane (NaN-safe)."""
    rows, cols = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    ok = np.isfinite(frame)
    a = np.column_stack([np.ones(ok.sum()), rows[ok], cols[ok]])
    coef, *_ = np.linalg.lstsq(a, frame[ok].astype(float), rcond=None)
    return frame - (coef[0] + coef[1] * rows + coef[2] * cols)


def normalise(image: np.ndarray) -> np.ndarray:
    """Median 0 and robust spread 1 (:func:`~stmwatch.models.robust.robust_sigma`) over the whole array."""
    spread = robust_sigma(image) or 1.0
    return ((image - np.nanmedian(image)) / spread).astype(np.float32)


def simulate_crop(surface: str, cls: str, seed: int, size: int = 32, jitter: float = 1.5,
                  bias_v: float | None = None) -> np.ndarray:
    """One ``(2, size, size)`` float32 crop (forward, backward) at the model scale, centred
    (within ``jitter`` pixels) on a defect of class ``cls``, normalised by :func:`normalise`."""
    surf = get_surface(surface)
    rng = np.random.default_rng([seed, 5])
    margin = 16
    n = size + 2 * margin
    artefacts = Artefacts(tilt=1.0, white_noise=float(rng.uniform(0.3, 1.2)), line_offsets=float(rng.uniform(0, 0.6)),
                          noise_1f=float(rng.uniform(0, 0.8)), hysteresis=float(rng.uniform(0, 0.7)))
    scan, truth = simulate_scan(surface, seed, pixels=(n, n), range_nm=n * surf.nm_per_px, bias_v=bias_v,
                                artefacts=artefacts, place=[(cls, 0.0, 0.0)],
                                n_defects=int(rng.poisson(1.5)), angle_deg=0.0)
    centre = (n - 1) / 2
    mine = [d for d in truth.defects if d.cls == cls]
    if not mine:  # no room for it (a step edge right there): try another sample
        return simulate_crop(surface, cls, seed + 7919, size, jitter, bias_v)
    d = min(mine, key=lambda d: math.hypot(d.row - centre, d.col - centre))
    r0 = int(round(d.row + rng.uniform(-jitter, jitter))) - size // 2
    c0 = int(round(d.col + rng.uniform(-jitter, jitter))) - size // 2
    r0, c0 = int(np.clip(r0, 0, n - size)), int(np.clip(c0, 0, n - size))
    z = scan.topography()
    frames = [_plane(f)[r0:r0 + size, c0:c0 + size] for f in (z.forward, z.backward)]
    return normalise(np.stack(frames))


def make_crops(out_dir: str | Path, surfaces: Sequence[str] | str, per_class: int, seed: int,
               size: int = 32) -> dict[str, dict[str, int]]:
    """Write few-shot crop sets ``<out_dir>/<surface>/<class>/<n>.npy``: ``per_class`` crops of
    ``(2, size, size)`` float32 per class (see :func:`simulate_crop`), alternating filled and
    empty states on Si and Ge. Returns the counts written per surface and class."""
    if isinstance(surfaces, str):
        surfaces = [surfaces]
    out = Path(out_dir)
    counts: dict[str, dict[str, int]] = {}
    for si, key in enumerate(surfaces):
        surf = get_surface(key)
        counts[key] = {}
        for ci, cls in enumerate(surf.classes):
            folder = out / key / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                crop_seed = int(np.random.SeedSequence([seed, si, ci, k]).generate_state(1)[0] & 0x7FFFFFFF)
                sign = -1.0 if (surf.filled_only or k % 2 == 0) else 1.0
                bias = sign * float(np.random.default_rng(crop_seed).uniform(1.2, 2.2))
                np.save(folder / f"{k:04d}.npy", simulate_crop(key, cls, crop_seed, size, bias_v=bias))
            counts[key][cls] = per_class
    return counts


# ---- pictures ----------------------------------------------------------------------------------


def to_png(image: np.ndarray, path: str | Path | None = None, clip: float = 0.5, plane: bool = True,
           flatten: bool = False):
    """A grey-scale Pillow image of a ``(rows, cols)`` array (robust contrast: ``clip`` percent
    saturated at each end; NaN black; row 0 at the top); saved to ``path`` when given.

    ``plane`` removes the least-squares plane first, ``flatten`` each line's median (the usual
    first steps of an STM viewer)."""
    from PIL import Image

    img = np.asarray(image, float)
    if plane and np.isfinite(img).any():
        img = _plane(img)
    if flatten and np.isfinite(img).any():
        acquired = np.isfinite(img).any(axis=1)
        img[acquired] -= np.nanmedian(img[acquired], axis=1, keepdims=True)
    lo, hi = np.nanpercentile(img, [clip, 100 - clip]) if np.isfinite(img).any() else (0.0, 1.0)
    scaled = np.clip((img - lo) / ((hi - lo) or 1.0), 0, 1)
    picture = Image.fromarray((np.nan_to_num(scaled, nan=0.0) * 255).astype(np.uint8))
    if path is not None:
        picture.save(path)
    return picture


def known_surfaces() -> list[str]:
    return list(SURFACES)


def defect_classes(surface: str) -> list[str]:
    return list(DEFECTS[surface])


def write_previews(out_dir: str | Path, seed: int = 1, tile: int = 256) -> list[Path]:
    """Montages for a quick look (``docs/img/sim_<surface>_{clean,artefacts}.png``): clean scans
    in filled and empty states at 25.6 nm, 8 nm and 60 nm; then each artefact alone (level 1.5,
    forward frame; hysteresis shows the backward one) and all together."""
    from PIL import Image, ImageDraw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def sheet(tiles: list[tuple], columns: int, path: Path) -> None:
        rows = -(-len(tiles) // columns)
        page = Image.new("L", (columns * (tile + 4), rows * (tile + 4)), 255)
        for k, (label, frame, *options) in enumerate(tiles):
            picture = to_png(frame, clip=1.0, **(options[0] if options else {})).resize((tile, tile))
            draw = ImageDraw.Draw(picture)
            draw.rectangle([0, 0, 7 * len(label) + 6, 14], fill=0)
            draw.text((3, 1), label, fill=255)
            page.paste(picture, ((k % columns) * (tile + 4), (k // columns) * (tile + 4)))
        page.save(path)
        written.append(path)

    for key, surf in SURFACES.items():
        biases = [-2.0] if surf.filled_only else [-2.0, 1.8]
        tiles = []
        for size in (25.6, 8.0, 60.0):
            for bias in biases:
                n = 256 if size < 50 else 400
                scan, _ = simulate_scan(key, seed if size < 50 else seed + 10, pixels=(n, n), range_nm=size,
                                        bias_v=bias)
                state = "filled" if bias < 0 else "empty"
                tiles.append((f"{surf.title} {state} {bias:+g} V, {size:g} nm", scan.topography().forward))
        sheet(tiles, 3 if surf.filled_only else 2, out / f"sim_{key}_clean.png")
        tiles = []
        for name in art.ARTEFACTS:
            scan, _ = simulate_scan(key, seed, range_nm=25.6, bias_v=-2.0,
                                    artefacts=Artefacts.only(name, level=1.5))
            z = scan.topography()
            if name == "hysteresis":
                tiles.append(("hysteresis: backward", z.backward, {}))
            elif name == "tilt":
                tiles.append(("tilt (no plane removed)", z.forward, {"plane": False}))
            elif name == "tip_change":
                tiles.append(("tip_change (lines flattened)", z.forward, {"flatten": True}))
            else:
                tiles.append((name, z.forward, {}))
        scan, _ = simulate_scan(key, seed, range_nm=25.6, bias_v=-2.0, artefacts=Artefacts.all())
        tiles.append(("all (lines flattened)", scan.topography().forward, {"flatten": True}))
        sheet(tiles, 4, out / f"sim_{key}_artefacts.png")
    return written


def training_scan(surface: str, seed: int, double_tip_share: float | None = None):
    """One simulated training scan: random size and geometry, and mostly every artefact at once (at
    a random level: double tips, drift, tip changes ... all together, as in the held-out set),
    else the simulator's realistic random mix.

    ``double_tip_share`` (0-1), if given, overrides only the double tip: that share of the scans
    has it on at a random level 0.6-1.4, the rest has it off (the other artefacts, the geometry and
    the surface are the same as without the option). ``None`` keeps the mix above (about 82 % on)."""
    rng = np.random.default_rng([seed, 11])
    geometry = draw_geometry(rng, (128, 384))
    artefacts = Artefacts.all(float(rng.uniform(0.6, 1.4))) if rng.random() < 0.8 else Artefacts.random(rng)
    if double_tip_share is not None:
        on, level = rng.random() < double_tip_share, float(rng.uniform(0.6, 1.4))
        artefacts = dataclasses.replace(artefacts, double_tip=level if on else 0.0)
    return simulate_scan(surface, seed, artefacts=artefacts, **geometry)
