"""Domain randomisation for training: scans of the training simulator pushed through a much wider
spread of what a real instrument varies, with the same ground truth.

Why: a model that learnt one simulator learns its tip, its noise and its defect looks, not defects
(issue 18). :func:`randomised_scan` draws a :class:`RandomStyle` (every range in :data:`RANGES`,
chosen from physics and generality before any measurement on another style, and fixed), simulates
the sample with :func:`~.simulate.simulate_scan` (its drift, creep, hysteresis, double tips, tip
changes and aborted scans) with a wider defect density and rows of defects, and then, on the
heights (nm) of both frames, in the order a microscope makes them:

1. **defect looks** around each true defect: a size factor (a local magnification about its
   centre, so the centre stays where the truth says), a gain (fainter, stronger or inverted) and a
   bright or dark halo;
2. **contrast**: the atomic corrugation (the image minus its 1 nm smooth part) scaled, made
   non-linear (a power law) or inverted (other bias, other tip state; TiO2(110) empty states);
3. **the sample beyond the simulator**: an extra step edge at any angle, contaminated patches
   (irregular clusters 3-8 nm across, up to 0.6 nm high) that are *not* defects and not in the
   truth, placed clear of the true defects;
4. **the tip**: grey dilation by a paraboloid apex with its own radii of curvature along two axes
   at any angle, asymmetric (another radius on one side of the apex), sometimes a second apex;
5. **feedback lag** along the fast axis: a first-order low-pass in the trace direction (forward
   left to right, backward right to left);
6. **noise** in acquisition order: 1/f^beta with a random exponent, telegraph (two-level)
   noise, white noise, line offsets, scars, glitched lines (a shifted run, the tip lost for a
   run, a burst of spikes).

Truth: positions are those of the simulator (every step keeps a defect's centre in place:
dilation by an apex at the origin keeps a protrusion's peak, the magnification is about the
centre); the mask is the simulator's footprint; the contamination is never in it.

Units: nm inside, metres in the returned :class:`~stmwatch.drivers.scan.Scan`; arrays
``(rows, columns)`` in the display frame. The same seed gives the same scan.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage, signal

from stmwatch.drivers.scan import Scan

from ..surfaces import get_surface
from . import artefacts as art
from .artefacts import AcquisitionOrder, Artefacts, power_law_noise
from .simulate import draw_geometry, simulate_scan
from .truth import Truth

# Every range, fixed before measuring anything on another style (docs/domain_randomisation.md).
RANGES: dict[str, tuple[float, float]] = {
    "density_per_nm2": (0.003, 0.15),     # log-uniform: a few to hundreds of defects per scan
    "rows_share": (0.35, 0.35),           # share of scans with lines of defects (lithography)
    "row_defects": (5, 30),               # defects per line, 1-3 lattice sites apart
    "tip_radius_nm": (0.3, 4.0),          # paraboloid radius of curvature (log-uniform), each axis
    "tip_skew": (1.0, 4.0),               # radius on the other side of the apex / radius
    "second_apex_share": (0.25, 0.25),
    "second_apex_nm": (0.4, 2.5),         # offset of a second apex (any direction)
    "second_apex_drop_nm": (0.0, 0.08),
    "lag_px": (0.0, 2.5),                 # feedback time constant, pixels along the trace
    "corrugation_gain": (0.4, 2.5),       # log-uniform
    "gamma": (0.6, 1.6),                  # power law on the corrugation
    "invert_share": (0.2, 0.2),           # corrugation inverted (every surface, both bias signs)
    "defect_size": (0.7, 1.6),            # per scan; each defect +-10 % around it
    "defect_gain": (0.4, 2.0),            # per defect; 10 % of them inverted
    "halo_share": (0.4, 0.4),
    "halo_nm": (-0.04, 0.04),             # halo height
    "halo_radius": (1.2, 2.2),            # x footprint radius
    "extra_step_share": (0.3, 0.3),
    "patches_per_1000nm2": (0.0, 4.0),    # contaminated patches (not defects)
    "patch_radius_nm": (1.5, 4.0),
    "patch_height_nm": (0.1, 0.6),
    "noise_1f_nm": (0.0005, 0.03),        # log-uniform standard deviation
    "noise_exponent": (0.5, 2.0),         # 1/f^beta
    "telegraph_share": (0.3, 0.3),
    "telegraph_nm": (0.01, 0.08),
    "telegraph_rate": (1e-4, 1e-2),       # switches per sample (log-uniform)
    "white_nm": (0.0005, 0.015),          # log-uniform
    "line_offsets": (0.0, 2.0),           # level of the simulator's line-offset random walk
    "scars": (0, 6),
    "glitch_lines": (0, 8),
}


@dataclasses.dataclass(frozen=True)
class RandomStyle:
    """One draw of the instrument: see :data:`RANGES` for every field's range (nm, pixels)."""

    density: float
    rows: int
    tip_radius: tuple[float, float]
    tip_angle: float
    tip_skew: float
    second_apex: tuple[float, float, float] | None  # dx, dy, drop (nm)
    lag_px: float
    corrugation: float
    gamma: float
    invert: bool
    defect_size: float
    defect_gain: tuple[float, float]
    halo: float
    halo_radius: float
    extra_step: bool
    patches_per_1000nm2: float
    noise_1f: float
    noise_exponent: float
    telegraph: float
    telegraph_rate: float
    white: float
    line_offsets: float
    scars: int
    glitch_lines: int
    bias_sign: float


def _u(rng: np.random.Generator, name: str) -> float:
    lo, hi = RANGES[name]
    return float(rng.uniform(lo, hi))


def _log(rng: np.random.Generator, name: str) -> float:
    lo, hi = RANGES[name]
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_style(rng: np.random.Generator) -> RandomStyle:
    """A random instrument from :data:`RANGES`."""
    second = None
    if rng.random() < RANGES["second_apex_share"][0]:
        dist, ang = _u(rng, "second_apex_nm"), float(rng.uniform(0, 2 * math.pi))
        second = (dist * math.cos(ang), dist * math.sin(ang), _u(rng, "second_apex_drop_nm"))
    gain_lo = _u(rng, "defect_gain")
    return RandomStyle(
        density=_log(rng, "density_per_nm2"),
        rows=int(rng.integers(1, 6)) if rng.random() < RANGES["rows_share"][0] else 0,
        tip_radius=(_log(rng, "tip_radius_nm"), _log(rng, "tip_radius_nm")),
        tip_angle=float(rng.uniform(0, math.pi)),
        tip_skew=_u(rng, "tip_skew") if rng.random() < 0.5 else 1.0,
        second_apex=second,
        lag_px=_u(rng, "lag_px"),
        corrugation=_log(rng, "corrugation_gain"),
        gamma=_u(rng, "gamma"),
        invert=bool(rng.random() < RANGES["invert_share"][0]),
        defect_size=_u(rng, "defect_size"),
        defect_gain=(gain_lo, float(rng.uniform(gain_lo, RANGES["defect_gain"][1]))),
        halo=_u(rng, "halo_nm") if rng.random() < RANGES["halo_share"][0] else 0.0,
        halo_radius=_u(rng, "halo_radius"),
        extra_step=bool(rng.random() < RANGES["extra_step_share"][0]),
        patches_per_1000nm2=_u(rng, "patches_per_1000nm2"),
        noise_1f=_log(rng, "noise_1f_nm"),
        noise_exponent=_u(rng, "noise_exponent"),
        telegraph=_u(rng, "telegraph_nm") if rng.random() < RANGES["telegraph_share"][0] else 0.0,
        telegraph_rate=_log(rng, "telegraph_rate"),
        white=_log(rng, "white_nm"),
        line_offsets=_u(rng, "line_offsets"),
        scars=int(rng.integers(RANGES["scars"][0], RANGES["scars"][1] + 1)),
        glitch_lines=int(rng.integers(RANGES["glitch_lines"][0], RANGES["glitch_lines"][1] + 1)),
        bias_sign=float(rng.choice([-1.0, 1.0])),
    )


# ---- the sample: rows of defects ------------------------------------------------------------------
def defect_rows(surface: str, geometry: dict, count: int, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    """``count`` straight lines of defects of one class each (class, x nm, y nm), inside the frame:
    5-30 defects 1-3 lattice sites apart, along any direction."""
    surf = get_surface(surface)
    width, height = geometry["range_nm"]
    cx, cy = (v * 1e9 for v in geometry["offset_m"])
    place = []
    for _ in range(count):
        cls = str(rng.choice(surf.classes))
        n = int(rng.integers(RANGES["row_defects"][0], RANGES["row_defects"][1] + 1))
        step = surf.site_nm * int(rng.integers(1, 4)) + 0.9  # the simulator keeps footprints apart
        ang = float(rng.uniform(0, math.pi))
        x0, y0 = cx + rng.uniform(-0.4, 0.4) * width, cy + rng.uniform(-0.4, 0.4) * height
        for k in range(n):
            t = (k - n / 2) * step
            place.append((cls, x0 + t * math.cos(ang), y0 + t * math.sin(ang)))
    return place


# ---- operations on the heights (nm) ---------------------------------------------------------------
def _pixel_grid(shape: tuple[int, int], pixel_nm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    return rows * pixel_nm[0], cols * pixel_nm[1]


def defect_looks(frames: list[np.ndarray], truth: Truth, style: RandomStyle, pixel_nm: tuple[float, float],
                 rng: np.random.Generator) -> None:
    """Size factor, gain and halo of every true defect, on the corrugation of each frame (in place);
    the centres stay put."""
    if not truth.defects:
        return
    shape = frames[0].shape
    yy, xx = _pixel_grid(shape, pixel_nm)
    disp_r, disp_c = np.zeros(shape), np.zeros(shape)
    gain_map, halo_map = np.zeros(shape), np.zeros(shape)
    for d in truth.defects:
        cy, cx = d.row * pixel_nm[0], d.col * pixel_nm[1]
        radius = max(float(d.radius_nm), 0.3)
        reach = 3.0 * radius * max(style.defect_size, 1.0) + 1.0
        r0, r1 = max(0, int((cy - reach) / pixel_nm[0])), min(shape[0], int((cy + reach) / pixel_nm[0]) + 2)
        c0, c1 = max(0, int((cx - reach) / pixel_nm[1])), min(shape[1], int((cx + reach) / pixel_nm[1]) + 2)
        if r0 >= r1 or c0 >= c1:
            continue
        dy, dx = yy[r0:r1, c0:c1] - cy, xx[r0:r1, c0:c1] - cx
        r = np.hypot(dy, dx)
        f = style.defect_size * float(rng.uniform(0.9, 1.1))
        inner, outer = radius * f, 2.5 * radius * f
        w = np.clip((outer - r) / max(outer - inner, 1e-6), 0.0, 1.0)
        w = w * w * (3 - 2 * w)  # smooth step: 1 inside, 0 beyond the outer radius
        shrink = (1.0 - 1.0 / f) * w  # sample at c + (p - c) / f
        disp_r[r0:r1, c0:c1] -= dy * shrink / pixel_nm[0]
        disp_c[r0:r1, c0:c1] -= dx * shrink / pixel_nm[1]
        g = float(rng.uniform(*style.defect_gain)) * (-1.0 if rng.random() < 0.1 else 1.0)
        sigma = 1.2 * radius * f
        gain_map[r0:r1, c0:c1] += (g - 1.0) * np.exp(-0.5 * (r / sigma) ** 2)
        if style.halo:
            ring = style.halo_radius * radius * f
            halo_map[r0:r1, c0:c1] += style.halo * np.exp(-0.5 * ((r - ring) / (0.35 * radius * f + 0.1)) ** 2)
    coords = np.array([np.arange(shape[0])[:, None] + disp_r, np.arange(shape[1])[None, :] + disp_c])
    for frame in frames:
        low = ndimage.gaussian_filter(frame, (1.0 / pixel_nm[0], 1.0 / pixel_nm[1]))
        hp = ndimage.map_coordinates(frame - low, coords, order=1, mode="nearest")
        frame[...] = low + hp * (1.0 + gain_map) + halo_map


def contrast(frame: np.ndarray, style: RandomStyle, pixel_nm: tuple[float, float]) -> np.ndarray:
    """The corrugation (image minus its 1 nm smooth part) scaled, raised to ``gamma`` (sign kept,
    relative to its spread) and inverted if the style says so."""
    low = ndimage.gaussian_filter(frame, (1.0 / pixel_nm[0], 1.0 / pixel_nm[1]))
    hp = frame - low
    a = float(np.std(hp)) + 1e-9
    hp = np.sign(hp) * a * np.abs(hp / a) ** style.gamma * style.corrugation
    return low + (-hp if style.invert else hp)


def extra_step(frames: list[np.ndarray], step_nm: float, pixel_nm: tuple[float, float], rng: np.random.Generator) -> None:
    """A meandering step edge at any angle across both frames (in place)."""
    yy, xx = _pixel_grid(frames[0].shape, pixel_nm)
    ang = float(rng.uniform(0, 2 * math.pi))
    p = xx * math.cos(ang) + yy * math.sin(ang)
    q = -xx * math.sin(ang) + yy * math.cos(ang)
    p0 = float(rng.uniform(p.min(), p.max()))
    wave = float(rng.uniform(4, 30))
    edge = p0 + float(rng.uniform(0, 0.1)) * wave * np.sin(2 * math.pi * q / wave + rng.uniform(0, 6.3))
    z = step_nm * rng.choice([-1.0, 1.0]) * 0.5 * (1 + np.tanh((p - edge) / 0.15))
    for frame in frames:
        frame += z


def contamination(frames: list[np.ndarray], truth: Truth, style: RandomStyle, pixel_nm: tuple[float, float],
                  rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Contaminated patches (in place): irregular clusters of 3-12 blobs plus rough texture, clear
    of every true defect (not defects, not in the truth). Returns their (row, col, radius nm)."""
    shape = frames[0].shape
    area = shape[0] * pixel_nm[0] * shape[1] * pixel_nm[1]
    n = int(rng.poisson(style.patches_per_1000nm2 * area / 1000.0))
    centres = np.array([(d.row * pixel_nm[0], d.col * pixel_nm[1], d.radius_nm) for d in truth.defects]).reshape(-1, 3)
    yy, xx = _pixel_grid(shape, pixel_nm)
    done = []
    for _ in range(n):
        radius = _u(rng, "patch_radius_nm")
        for _attempt in range(30):
            cy, cx = rng.uniform(0, shape[0] * pixel_nm[0]), rng.uniform(0, shape[1] * pixel_nm[1])
            if not len(centres) or np.all(np.hypot(centres[:, 0] - cy, centres[:, 1] - cx) > radius + centres[:, 2] + 1.5):
                break
        else:
            continue
        z = np.zeros(shape)
        height = _u(rng, "patch_height_nm")
        for _blob in range(int(rng.integers(3, 13))):
            a, rr = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.random()) * 0.7
            by, bx = cy + rr * math.sin(a), cx + rr * math.cos(a)
            s = rng.uniform(0.25, 0.45) * radius
            z = np.maximum(z, height * rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((yy - by) ** 2 + (xx - bx) ** 2) / s ** 2))
        rough = ndimage.gaussian_filter(rng.normal(0, 1, shape), 0.15 / min(pixel_nm))
        z *= 1.0 + 0.3 * rough / (rough.std() + 1e-9)
        for frame in frames:
            frame += z
        done.append((cy / pixel_nm[0], cx / pixel_nm[1], radius))
    return done


def tip_structure(style: RandomStyle, pixel_nm: tuple[float, float], depth_nm: float = 0.15) -> np.ndarray:
    """The apex as a grey-dilation structure (nm, 0 at the centre pixel, negative around): a
    paraboloid with radii ``tip_radius`` along and across ``tip_angle``, the radius along times
    ``tip_skew`` on one side (an asymmetric tip); ``-inf`` where it is more than ``depth_nm``
    below the apex (those parts never touch the surface first)."""
    r_a, r_b = style.tip_radius
    reach = math.sqrt(2 * max(r_a * style.tip_skew, r_b) * depth_nm)
    hr, hc = (max(1, min(25, int(math.ceil(reach / p)))) for p in pixel_nm)
    dy, dx = np.mgrid[-hr:hr + 1, -hc:hc + 1].astype(float)
    dy, dx = dy * pixel_nm[0], dx * pixel_nm[1]
    a = dx * math.cos(style.tip_angle) + dy * math.sin(style.tip_angle)
    b = -dx * math.sin(style.tip_angle) + dy * math.cos(style.tip_angle)
    ra = np.where(a > 0, r_a * style.tip_skew, r_a)
    s = -(a ** 2 / (2 * ra) + b ** 2 / (2 * r_b))
    return np.where(s >= -depth_nm, s, -np.inf)


def tip_dilation(frame: np.ndarray, style: RandomStyle, pixel_nm: tuple[float, float]) -> np.ndarray:
    """The image a finite tip records: grey dilation of the heights by the apex, and the second
    apex (if any) as the same image shifted and lowered, the nearer apex winning."""
    s = tip_structure(style, pixel_nm)
    inside = np.isfinite(s)
    out = ndimage.grey_dilation(frame, footprint=inside, structure=np.where(inside, s, 0.0))
    if style.second_apex is not None:
        dx, dy, drop = style.second_apex
        shifted = ndimage.shift(out, (dy / pixel_nm[0], dx / pixel_nm[1]), order=1, mode="nearest")
        out = np.maximum(out, shifted - drop)
    return out


def feedback_lag(frame: np.ndarray, lag_px: float, forward: bool) -> np.ndarray:
    """A first-order low-pass of time constant ``lag_px`` pixels along the trace (forward left to
    right, backward right to left)."""
    if lag_px < 0.05:
        return frame
    alpha = 1.0 / (1.0 + lag_px)
    x = frame if forward else frame[:, ::-1]
    start = x[:, :1]
    y = signal.lfilter([alpha], [1.0, alpha - 1.0], x - start, axis=1) + start
    return y if forward else y[:, ::-1]


def telegraph_noise(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of two-level noise (0 or 1) switching with probability ``rate`` per sample."""
    return (np.cumsum(rng.random(n) < rate) % 2).astype(float)


def add_noise(frames: list[np.ndarray], style: RandomStyle, direction: str, rng: np.random.Generator) -> None:
    """Noise in acquisition order on the forward and backward frames (in place)."""
    fwd, bwd = frames
    rows, cols = fwd.shape
    acq = AcquisitionOrder(rows, cols, direction)
    k_fwd, k_bwd = acq.sample_index()
    n = 2 * rows * cols
    seq = power_law_noise(n, style.noise_exponent, rng) * style.noise_1f
    if style.telegraph:
        seq += telegraph_noise(n, style.telegraph_rate, rng) * style.telegraph
    fwd += seq[k_fwd] + rng.normal(0, style.white, fwd.shape)
    bwd += seq[k_bwd] + rng.normal(0, style.white, bwd.shape)
    if style.line_offsets:
        per_line = art.line_offsets(style.line_offsets, rows, rng)[acq.line()]
        fwd += per_line[:, None]
        bwd += per_line[:, None]
    if style.scars:
        art.add_scars(frames, style.scars, float(rng.uniform(0.05, 0.4)), rng)
    for _ in range(style.glitch_lines):
        r = int(rng.integers(rows))
        length = int(rng.integers(max(3, cols // 20), cols + 1))
        start = int(rng.integers(0, cols - length + 1))
        kind = int(rng.integers(3))
        for frame in (frames if rng.random() < 0.5 else [frames[int(rng.integers(2))]]):
            seg = frame[r, start:start + length]
            if kind == 0:  # the line shifted: the piezo slipped
                seg[...] = np.roll(seg, int(rng.integers(-6, 7))) + rng.normal(0, 0.02)
            elif kind == 1:  # the tip lost the surface for a run
                seg[...] = seg[0] + rng.normal(0, 0.005, seg.shape)
            else:  # a burst of spikes
                spikes = rng.random(seg.shape) < 0.2
                seg[spikes] += rng.normal(0, 0.3, int(spikes.sum()))


# ---- the whole scan --------------------------------------------------------------------------------
def randomise_heights(scan: Scan, truth: Truth, style: RandomStyle, rng: np.random.Generator) -> Scan:
    """``scan`` (a training-style simulation with its ``truth``) seen by the instrument ``style``:
    steps 1-6 of the module docstring on the Z frames. Returns a new Scan (other channels kept)."""
    z_chan = next(c for c in scan.channels if c.name == "Z")
    nx, ny = scan.pixels
    pixel_nm = (scan.range_m[1] * 1e9 / ny, scan.range_m[0] * 1e9 / nx)
    raw = [np.asarray(z_chan.forward, float) * 1e9, np.asarray(z_chan.backward, float) * 1e9]
    missing = ~np.isfinite(raw[0]) | ~np.isfinite(raw[1])
    offset = float(np.nanmedian(raw[0])) if np.isfinite(raw[0]).any() else 0.0
    frames = [np.where(missing, offset, f) - offset for f in raw]
    defect_looks(frames, truth, style, pixel_nm, rng)
    frames = [contrast(f, style, pixel_nm) for f in frames]
    if style.extra_step:
        extra_step(frames, get_surface(truth.surface).step_nm, pixel_nm, rng)
    contamination(frames, truth, style, pixel_nm, rng)
    frames = [tip_dilation(f, style, pixel_nm) for f in frames]
    frames = [feedback_lag(frames[0], style.lag_px, True), feedback_lag(frames[1], style.lag_px, False)]
    add_noise(frames, style, scan.direction, rng)
    out = [np.where(missing, np.nan, f + offset) * 1e-9 for f in frames]
    new_z = dataclasses.replace(z_chan, forward=out[0].astype(np.float32), backward=out[1].astype(np.float32))
    return dataclasses.replace(scan, channels=[new_z if c is z_chan else c for c in scan.channels])


# The fields of a RandomStyle that belong to the instrument (tip, feedback, contrast, how it shows
# defects, noise), not to the sample or the scan (density, rows of defects, steps, contamination,
# scars, glitches, bias sign).
INSTRUMENT_FIELDS = ("tip_radius", "tip_angle", "tip_skew", "second_apex", "lag_px", "corrugation", "gamma", "invert",
                     "defect_size", "defect_gain", "halo", "halo_radius", "noise_1f", "noise_exponent", "telegraph",
                     "telegraph_rate", "white", "line_offsets")


def randomised_scan(surface: str, seed: int, pixel_range: tuple[int, int] = (128, 384),
                    instrument: RandomStyle | None = None) -> tuple[Scan, Truth, RandomStyle]:
    """One domain-randomised training scan of ``surface``: random geometry (as the training scans),
    the simulator's artefacts (all at 0.3-1.4, or its random mix, half each), the style's defect
    density and rows, either bias sign, then :func:`randomise_heights`. Deterministic per seed.
    ``instrument``: a style whose :data:`INSTRUMENT_FIELDS` replace this scan's own draw (one
    microscope for a folder of scans: ``stmwatch simulate --style randomised``); the sample and the
    scan (density, rows, steps, contamination, bias sign, ...) stay the seed's own."""
    rng = np.random.default_rng([seed, 31])
    style = draw_style(rng)
    if instrument is not None:
        style = dataclasses.replace(style, **{name: getattr(instrument, name) for name in INSTRUMENT_FIELDS})
    geometry = draw_geometry(rng, pixel_range)
    artefacts = Artefacts.all(float(rng.uniform(0.3, 1.4))) if rng.random() < 0.5 else Artefacts.random(rng)
    # the style adds its own noise; the simulator's white and 1/f noise would be dilated by the tip
    artefacts = dataclasses.replace(artefacts, noise_1f=0.0, white_noise=0.0, scars=0.0, line_offsets=0.0,
                                    aborted=artefacts.aborted if rng.random() < 0.2 else 0.0)
    width, height = geometry["range_nm"]
    n_defects = int(rng.poisson(style.density * width * height))
    place = defect_rows(surface, geometry, style.rows, rng)
    bias = style.bias_sign * float(np.round(rng.uniform(0.5, 2.5), 2))
    scan, truth = simulate_scan(surface, seed, artefacts=artefacts, n_defects=n_defects, place=place,
                                bias_v=bias, **geometry)
    return randomise_heights(scan, truth, style, rng), truth, style
