"""A foreign microscope: a second, independent rendering style for testing models (``--style foreign``).

The training style (:mod:`.simulate`, :mod:`.sample`, :mod:`.artefacts`) is what the shipped models
learnt. This module draws the same three surfaces and the same defect classes *as another
instrument would show them*, with none of that code: its own lattice rendering, its own defect
looks, a blunt asymmetric tip applied as a tip-sample dilation (not a blur), 1/f and telegraph
noise in acquisition order, feedback lag along the fast axis, bias-dependent contrast, a scan
make-up from sparse to hundreds of defects per scan (with lines of dangling bonds as lithography
leaves them), straight step edges at any angle, contaminated patches and glitched lines.

Its parameters are written in ``docs/foreign_style.md`` and are frozen: models may be measured on
it, never trained or selected on it (except ``stmwatch adapt`` on its unlabelled ``.sxm`` files).

Units: nm inside, metres in the :class:`~stmwatch.drivers.scan.Scan` and in the truth's
``x_m``/``y_m``. Arrays are ``(rows, columns)`` in the display frame (row 0 at the top).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np

from stmwatch.drivers.scan import Channel, Scan

from ..surfaces import get_surface
from .truth import Truth, TruthDefect  # the truth format is shared with the training style

__all__ = ["STYLE", "ForeignStyle", "simulate_foreign"]


@dataclasses.dataclass(frozen=True)
class ForeignStyle:
    """The frozen parameters of the foreign microscope (ranges are drawn uniformly per scan).

    Do not tune these after models have been measured on them (``docs/foreign_style.md``)."""

    # tip: a paraboloid apex z_tip = r^2 / (2 R) with radii R_a, R_b (nm) along a random axis,
    # plus a second, lower apex (the asymmetric tip), then a small electronic blur
    tip_radius_nm: tuple[float, float] = (0.3, 1.0)
    tip_aspect: tuple[float, float] = (1.0, 2.2)
    second_apex_prob: float = 0.6
    second_apex_offset_nm: tuple[float, float] = (0.25, 0.6)
    second_apex_drop_nm: tuple[float, float] = (0.02, 0.08)
    tip_blur_nm: tuple[float, float] = (0.04, 0.1)
    # bias (V): Si and Ge either polarity; TiO2(110) empty states (as most labs image it)
    bias_abs_v: tuple[float, float] = (1.0, 2.6)
    tio2_bias_v: tuple[float, float] = (0.8, 1.8)
    # lattice corrugation (nm) at |V| = 1.6 V, scaled by (1.6 / |V|) ** contrast_exponent
    corrugation_nm: tuple[float, float] = (0.03, 0.08)
    contrast_exponent: float = 0.8
    # defects per nm^2, log-uniform; class weights Dirichlet(1)
    density_per_nm2: tuple[float, float] = (0.002, 0.3)
    min_gap_nm: float = 0.15
    defect_scale: tuple[float, float] = (0.85, 1.25)  # one size factor per scan on every defect
    # lithography lines: occupied every second lattice site along the rows, 85 % filled
    line_prob: float = 0.4
    lines: tuple[int, int] = (1, 5)
    line_length_nm: tuple[float, float] = (3.0, 18.0)
    line_fill: float = 0.85
    # steps: 0-3 straight edges at any angle, slight waviness
    step_counts: tuple[int, ...] = (0, 0, 1, 1, 2, 3)
    step_width_nm: float = 0.5
    # contaminated patches: clusters of bright blobs (not defects, not in the truth)
    patch_prob: float = 0.5
    patches: tuple[int, int] = (1, 3)
    patch_radius_nm: tuple[float, float] = (1.2, 3.5)
    # noise, in acquisition order (nm)
    pink_nm: tuple[float, float] = (0.004, 0.015)
    telegraph_nm: tuple[float, float] = (0.008, 0.03)
    telegraph_switches: tuple[int, int] = (4, 60)
    white_nm: tuple[float, float] = (0.002, 0.006)
    feedback_lag_px: tuple[float, float] = (0.3, 1.8)
    line_walk_nm: float = 0.004
    glitches: tuple[int, int] = (0, 6)
    tilt_nm_per_nm: float = 0.03
    bow_nm: tuple[float, float] = (0.0, 0.4)


STYLE = ForeignStyle()

# Lattice facts come from models/surfaces.py; the looks below are this instrument's own.
# Each class: footprint radius (nm, for the mask and spacing) and a shape(du, dv, p, empty, rng-drawn p).
_LINE_CLASS = {"si001h": ("dangling_bond", "along"), "ge001": ("dimer_vacancy", "across"),
               "tio2110": ("hydroxyl", "along")}


def _g(du, dv, su, sv, h):
    return h * np.exp(-0.5 * ((du / su) ** 2 + (dv / sv) ** 2))


def _draw_defect(surface: str, cls: str, rng: np.random.Generator, scale: float) -> dict:
    """The random look of one defect (sizes in nm already times the scan's ``scale``)."""
    s = scale
    side = float(rng.choice([-1.0, 1.0]))
    p: dict = {"side": side, "rot": float(rng.normal(0, 0.15))}
    if surface == "si001h":
        if cls == "dangling_bond":
            p.update(s=rng.uniform(0.33, 0.48) * s, h=rng.uniform(0.12, 0.3), halo=rng.uniform(0.0, 0.04), r=1.0 * s)
        elif cls == "as_incorporated":
            p.update(su=rng.uniform(0.4, 0.55) * s, sv=rng.uniform(0.25, 0.32) * s, h=rng.uniform(0.05, 0.09),
                     b=rng.uniform(0.05, 0.1), r=1.0 * s)
        elif cls == "vacancy":
            n = int(rng.choice([1, 2, 2, 3]))
            p.update(n=n, su=(0.18 + 0.2 * n) * s, sv=rng.uniform(0.24, 0.32) * s, h=rng.uniform(0.1, 0.2),
                     r=(0.45 + 0.25 * n) * s)
        else:  # ash3_fragment: two lobes across the row with a dark notch beside them
            p.update(s=rng.uniform(0.2, 0.28) * s, h=rng.uniform(0.07, 0.12), d=rng.uniform(0.03, 0.07), r=1.0 * s)
    elif surface == "ge001":
        if cls == "dimer_vacancy":
            n = int(rng.choice([1, 2, 3, 4]))
            p.update(n=n, su=(0.2 + 0.2 * n) * s, sv=rng.uniform(0.3, 0.4) * s, h=rng.uniform(0.08, 0.16),
                     r=(0.5 + 0.22 * n) * s)
        elif cls == "as_incorporated":
            p.update(s=rng.uniform(0.22, 0.3) * s, h=rng.uniform(0.08, 0.14), d=rng.uniform(0.04, 0.08), r=0.9 * s)
        elif cls == "c_defect":
            p.update(s=rng.uniform(0.18, 0.24) * s, h=rng.uniform(0.07, 0.12), r=1.0 * s)
        else:  # adsorbate: an irregular bright cluster of 2-4 lobes
            k = int(rng.integers(2, 5))
            p.update(k=k, lobes=rng.normal(0, 0.3 * s, (k, 2)).tolist(), s=rng.uniform(0.28, 0.42) * s,
                     h=rng.uniform(0.2, 0.45), r=1.3 * s)
    else:  # tio2110 (empty states: Ti rows bright)
        if cls == "o_vacancy":
            p.update(su=rng.uniform(0.3, 0.4) * s, sv=rng.uniform(0.22, 0.28) * s, h=rng.uniform(0.03, 0.05), r=0.7 * s)
        elif cls == "hydroxyl":
            p.update(s=rng.uniform(0.3, 0.38) * s, h=rng.uniform(0.07, 0.11), r=0.75 * s)
        elif cls == "ti_interstitial":
            p.update(su=rng.uniform(0.3, 0.4) * s, sv=rng.uniform(0.45, 0.6) * s, h=rng.uniform(0.05, 0.09),
                     ring=rng.uniform(0.01, 0.03), r=1.0 * s)
        else:  # adatom
            p.update(s=rng.uniform(0.45, 0.75) * s, h=rng.uniform(0.3, 0.6), r=1.4 * s)
    return p


def _defect_height(surface: str, cls: str, du, dv, p: dict, empty: bool):
    """Height (nm) of one defect in its own frame (``du`` along the rows, ``dv`` across)."""
    c, s_ = math.cos(p["rot"]), math.sin(p["rot"])
    du, dv = du * c + dv * s_, -du * s_ + dv * c
    side = p["side"]
    if surface == "si001h":
        if cls == "dangling_bond":
            r = np.hypot(du, dv)
            z = _g(du, dv, p["s"], p["s"], p["h"] * (1.3 if empty else 1.0))
            return z - p["halo"] * np.exp(-0.5 * ((r - 1.1 * p["r"]) / 0.25) ** 2) if empty else z
        if cls == "as_incorporated":  # filled: a dark dash along the row with a bright end; empty: faint bright
            if empty:
                return _g(du, dv - 0.2 * side, 0.3, 0.25, p["b"])
            return -_g(du, dv, p["su"], p["sv"], p["h"]) + _g(du - 0.45 * side, dv, 0.2, 0.2, p["b"])
        if cls == "vacancy":  # dark dash along the row (as the dark features of real Si(001):H scans)
            return -_g(du, dv, p["su"], p["sv"], p["h"] * (0.7 if empty else 1.0))
        # ash3_fragment
        lobes = _g(du, dv - 0.26, p["s"], p["s"], p["h"]) + _g(du, dv + 0.26, p["s"], p["s"], p["h"])
        return lobes - _g(du - 0.4 * side, dv, 0.2, 0.3, p["d"] * (2.0 if empty else 1.0))
    if surface == "ge001":
        if cls == "dimer_vacancy":
            return -_g(du, dv, p["su"], p["sv"], p["h"])
        if cls == "as_incorporated":  # the bright side flips with the bias
            sgn = -side if empty else side
            return _g(du, dv - 0.2 * sgn, p["s"], p["s"], p["h"]) - _g(du, dv + 0.2 * sgn, p["s"], p["s"], p["d"])
        if cls == "c_defect":  # four lobes in a cross, dark centre in empty states
            z = sum(_g(du - a, dv - b, p["s"], p["s"], p["h"]) for a, b in ((0.3, 0), (-0.3, 0), (0, 0.3), (0, -0.3)))
            return z - (_g(du, dv, 0.2, 0.2, 0.6 * p["h"]) if empty else 0.0)
        return sum(_g(du - a, dv - b, p["s"], p["s"], p["h"]) for a, b in p["lobes"])
    if cls == "o_vacancy":
        return _g(du, dv, p["su"], p["sv"], p["h"])
    if cls == "hydroxyl":
        return _g(du, dv, p["s"], p["s"], p["h"])
    if cls == "ti_interstitial":
        r = np.hypot(du, dv)
        return _g(du, dv, p["su"], p["sv"], p["h"]) - p["ring"] * np.exp(-0.5 * ((r - 0.9) / 0.2) ** 2)
    return _g(du, dv, p["s"], p["s"], p["h"])


# site offsets (du along the row, dv across, nm) from a lattice site, per surface and class
def _site_offset(surface: str, cls: str, rng: np.random.Generator, site: float, row: float) -> tuple[float, float]:
    if surface == "si001h":
        return {"dangling_bond": (0.0, 0.115 * float(rng.choice([-1, 1]))), "ash3_fragment": (site / 2, 0.0)}.get(
            cls, (0.0, 0.0))
    if surface == "ge001":
        return (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))) if cls == "adsorbate" else (0.0, 0.0)
    if cls in ("o_vacancy", "hydroxyl"):
        return 0.0, row / 2  # on the (dark) bridging-oxygen rows
    if cls == "adatom":
        return float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.3, 0.3))
    return site / 2, 0.0


def _lattice(surface: str, u, v, empty: bool, amp: float):
    """This instrument's rendering of the surface lattice (nm) in local coordinates."""
    surf = get_surface(surface)
    cv = 0.5 + 0.5 * np.cos(2 * np.pi * v / surf.row_nm)
    cu = 0.5 + 0.5 * np.cos(2 * np.pi * u / surf.site_nm)
    if surface == "si001h":
        if empty:  # each row split in two (the dimer's atoms), a deep trough between rows
            split = 1.0 - 0.45 * np.exp(-0.5 * (np.abs(((v + surf.row_nm / 2) % surf.row_nm) - surf.row_nm / 2) / 0.07) ** 2)
            return amp * cv ** 1.5 * split * (0.85 + 0.15 * cu)
        return amp * cv ** 3 * (0.7 + 0.3 * cu)
    if surface == "ge001":  # zig-zag buckling in every row (c(4x2) everywhere)
        j = np.floor(u / surf.site_nm + 0.5)
        i = np.floor(v / surf.row_nm + 0.5)
        zig = np.where((i + j) % 2 == 0, 1.0, -1.0) * (1 if empty else -1)
        dv = v - i * surf.row_nm - 0.13 * zig
        du = u - j * surf.site_nm
        return amp * (0.35 * cv ** 2 + np.exp(-0.5 * ((du / 0.16) ** 2 + (dv / 0.14) ** 2)))
    # TiO2(110) empty states: bright Ti rows, weak modulation along them
    return amp * cv ** 1.2 * (0.9 + 0.1 * cu)


@dataclasses.dataclass
class _Defect:
    cls: str
    x: float
    y: float
    theta: float
    radius: float
    p: dict


def _steps(rng, style: ForeignStyle, centre, half: float):
    """Straight, slightly wavy step edges: list of (normal angle, offset nm, wave amp, wave k, phase)."""
    n = int(rng.choice(style.step_counts))
    normal = float(rng.uniform(0, 2 * np.pi))
    c0 = centre[0] * math.cos(normal) + centre[1] * math.sin(normal)
    offsets = np.sort(c0 + rng.uniform(-0.8 * half, 0.8 * half, n))
    return [(normal, float(o), float(rng.uniform(0, 0.6)), float(rng.uniform(0.2, 1.0)), float(rng.uniform(0, 6.3)))
            for o in offsets]


def _terrace(edges, x, y, width: float):
    """Terrace index and staircase height (in steps) at positions ``x, y`` (nm), and the distance
    to the nearest edge (nm)."""
    index = np.zeros(np.shape(x), np.int64)
    height = np.zeros(np.shape(x))
    near = np.full(np.shape(x), np.inf)
    for normal, off, amp, k, ph in edges:
        p = x * math.cos(normal) + y * math.sin(normal)
        q = -x * math.sin(normal) + y * math.cos(normal)
        d = p - off - amp * np.sin(k * q + ph)
        index += d > 0
        height += 0.5 * (1 + np.tanh(np.clip(d / width, -30, 30)))
        near = np.minimum(near, np.abs(d))
    return index, height, near


def _tip_dilate(z: np.ndarray, nm_per_px: float, rng, style: ForeignStyle) -> tuple[np.ndarray, dict]:
    """The image a blunt, asymmetric tip records: grey dilation of ``z`` (nm) by the tip's apex
    (a paraboloid with two radii and maybe a second, lower apex), then a small Gaussian blur."""
    r_a = rng.uniform(*style.tip_radius_nm)
    r_b = r_a * rng.uniform(*style.tip_aspect)
    axis = rng.uniform(0, np.pi)
    reach = 0.7  # nm of tip considered
    k = int(math.ceil(reach / nm_per_px))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1] * nm_per_px
    a = dx * math.cos(axis) + dy * math.sin(axis)
    b = -dx * math.sin(axis) + dy * math.cos(axis)
    tip = a ** 2 / (2 * r_a) + b ** 2 / (2 * r_b)
    info = {"radius_nm": [round(float(r_a), 3), round(float(r_b), 3)], "axis_rad": round(float(axis), 3)}
    if rng.random() < style.second_apex_prob:
        ang = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(*style.second_apex_offset_nm)
        drop = rng.uniform(*style.second_apex_drop_nm)
        second = ((dx - off * math.cos(ang)) ** 2 + (dy - off * math.sin(ang)) ** 2) / (2 * 0.5 * r_a) + drop
        tip = np.minimum(tip, second)
        info["second_apex_nm"] = [round(float(off * math.cos(ang)), 3), round(float(off * math.sin(ang)), 3),
                                  round(float(drop), 3)]
    keep = tip < 0.25
    pad = np.pad(z, k, mode="edge")
    out = np.full_like(z, -np.inf)
    ny, nx = z.shape
    for i, j in zip(*np.nonzero(keep)):
        out = np.maximum(out, pad[i:i + ny, j:j + nx] - tip[i, j])
    blur = rng.uniform(*style.tip_blur_nm) / nm_per_px
    info["blur_nm"] = round(float(blur * nm_per_px), 3)
    return _gauss_blur(out, blur), info


def _gauss_blur(z: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur (``sigma_px`` pixels) with edge padding."""
    k = max(1, int(math.ceil(3 * sigma_px)))
    w = np.exp(-0.5 * (np.arange(-k, k + 1) / max(sigma_px, 1e-6)) ** 2)
    w /= w.sum()
    pad = np.pad(z, k, mode="edge")
    rows = sum(w[i] * pad[i:i + z.shape[0], :] for i in range(2 * k + 1))
    return sum(w[j] * rows[:, j:j + z.shape[1]] for j in range(2 * k + 1))


def _pink(n: int, rng) -> np.ndarray:
    """1/f noise of unit standard deviation, ``n`` samples."""
    f = np.fft.rfftfreq(n)
    spec = (rng.normal(size=f.size) + 1j * rng.normal(size=f.size)) / np.sqrt(np.maximum(f, 1.0 / n))
    x = np.fft.irfft(spec, n)
    return (x - x.mean()) / (x.std() or 1.0)


def _telegraph(n: int, switches: int, rng) -> np.ndarray:
    """Telegraph noise: a signal that jumps between 0 and 1 at ``switches`` random times."""
    times = np.sort(rng.integers(0, n, switches))
    state = np.zeros(n)
    level = 0.0
    last = 0
    for t in times:
        state[last:t] = level
        level = 1.0 - level
        last = t
    state[last:] = level
    return state


def _lag(frame: np.ndarray, tau: float, forward: bool) -> np.ndarray:
    """The feedback's lag along the fast axis: a one-sided exponential filter of ``tau`` pixels in
    the direction the tip moves (left to right forward, right to left backward)."""
    if tau <= 0:
        return frame
    a = math.exp(-1.0 / tau)
    out = frame.copy() if forward else frame[:, ::-1].copy()
    for j in range(1, out.shape[1]):
        out[:, j] = a * out[:, j - 1] + (1 - a) * out[:, j]
    return out if forward else out[:, ::-1]


def simulate_foreign(surface: str, seed: int, *, pixels: tuple[int, int] = (256, 256),
                     range_nm: float | tuple[float, float] | None = None, offset_m: tuple[float, float] = (0.0, 0.0),
                     angle_deg: float = 0.0, direction: str = "down", bias_v: float | None = None,
                     n_defects: int | None = None, style: ForeignStyle = STYLE, draw_defects: bool = True):
    """One scan of ``surface`` from the foreign microscope, and its truth (as
    :func:`~.simulate.simulate_scan`; same arguments, same meaning, same bytes for the same seed).

    ``range_nm`` None draws 0.09-0.14 nm per pixel. ``draw_defects`` False renders the very same scan
    (tip, noise, glitches, patches) without the defects, for tests that compare what is drawn with
    the truth. ``Truth.artefacts`` records what was drawn (tip, density, lines, patches, the
    glitched rows)."""
    surf = get_surface(surface)
    key = sum(surface.encode())  # a per-surface stream: the same seed draws different samples per surface
    nx, ny = int(pixels[0]), int(pixels[1])
    rng = np.random.default_rng([seed, key, 1801])
    if range_nm is None:
        scale = float(rng.uniform(0.09, 0.14))
        width, height = nx * scale, ny * scale
    elif np.ndim(range_nm) == 0:
        width, height = float(range_nm), float(range_nm) * ny / nx
    else:
        width, height = float(range_nm[0]), float(range_nm[1])
    if bias_v is None:
        if surface == "tio2110":
            bias_v = float(np.round(rng.uniform(*style.tio2_bias_v), 2))
        else:
            bias_v = float(np.round(rng.choice([-1.0, 1.0]) * rng.uniform(*style.bias_abs_v), 2))
    else:
        rng.uniform()
    empty = bias_v > 0
    geometry = Scan(channels=[], pixels=(nx, ny), range_m=(width * 1e-9, height * 1e-9),
                    offset_m=(float(offset_m[0]), float(offset_m[1])), angle_deg=float(angle_deg),
                    direction=direction, bias_v=float(bias_v))
    nm_px = width / nx
    rows, cols = np.mgrid[0:ny, 0:nx]
    px, py = (v * 1e9 for v in geometry.pixel_to_scanner(rows, cols))
    centre = (geometry.offset_m[0] * 1e9, geometry.offset_m[1] * 1e9)
    half = 0.5 * math.hypot(width, height)

    # The sample: steps, lattice orientation per terrace, corrugation.
    r_s = np.random.default_rng([seed, key, 1802])
    edges = _steps(r_s, style, centre, half)
    base = float(r_s.uniform(0, np.pi))
    shifts = r_s.uniform(0, 1, (8, 2))
    amp = float(r_s.uniform(*style.corrugation_nm)) * (1.6 / abs(bias_v)) ** style.contrast_exponent
    terr, steps_h, near_edge = _terrace(edges, px, py, style.step_width_nm)

    def orient(t):
        return base + (np.pi / 2) * (t % 2) if surf.rotates_at_steps else base

    def local(x, y, t):
        th = orient(t)
        u = x * np.cos(th) + y * np.sin(th) + shifts[t % 8, 0] * surf.site_nm
        v = -x * np.sin(th) + y * np.cos(th) + shifts[t % 8, 1] * surf.row_nm
        return u, v

    u, v = local(px, py, terr)
    z = steps_h * surf.step_nm + _lattice(surface, u, v, empty, amp)

    # Defects: random sites at a log-uniform density, then lithography lines.
    r_d = np.random.default_rng([seed, key, 1803])
    density = math.exp(r_d.uniform(*np.log(style.density_per_nm2)))
    n = int(r_d.poisson(density * width * height)) if n_defects is None else int(n_defects)
    weights = r_d.dirichlet(np.ones(len(surf.classes)))
    dscale = float(r_d.uniform(*style.defect_scale))
    placed: list[_Defect] = []
    xy = np.zeros((0, 2))
    radii = np.zeros(0)

    def add(cls: str, x: float, y: float, snap: bool = True) -> bool:
        nonlocal xy, radii
        t = int(_terrace(edges, np.array(x), np.array(y), style.step_width_nm)[0])
        th = float(orient(t))
        if snap:
            uu, vv = local(np.array(x), np.array(y), t)
            du, dv = _site_offset(surface, cls, r_d, surf.site_nm, surf.row_nm)
            su = np.round(uu / surf.site_nm) * surf.site_nm + du - uu
            sv = np.round(vv / surf.row_nm) * surf.row_nm + dv - vv
            x = float(x + su * math.cos(th) - sv * math.sin(th))
            y = float(y + su * math.sin(th) + sv * math.cos(th))
        p = _draw_defect(surface, cls, r_d, dscale)
        if float(_terrace(edges, np.array(x), np.array(y), style.step_width_nm)[2]) < p["r"] + 0.3:
            return False
        if len(placed) and np.any(np.hypot(xy[:, 0] - x, xy[:, 1] - y) < radii + p["r"] + style.min_gap_nm):
            return False
        placed.append(_Defect(cls, x, y, th, p["r"], p))
        xy = np.vstack([xy, [x, y]])
        radii = np.append(radii, p["r"])
        return True

    line_specs = []
    if r_d.random() < style.line_prob:
        cls, way = _LINE_CLASS[surface]
        for _ in range(int(r_d.integers(style.lines[0], style.lines[1] + 1))):
            x0, y0 = (float(c) for c in geometry.pixel_to_scanner(r_d.uniform(0, ny), r_d.uniform(0, nx)))
            x0, y0 = x0 * 1e9, y0 * 1e9
            t = int(_terrace(edges, np.array(x0), np.array(y0), style.step_width_nm)[0])
            th = float(orient(t)) + (0 if way == "along" else np.pi / 2)
            pitch = 2 * (surf.site_nm if way == "along" else surf.row_nm / 2)
            length = r_d.uniform(*style.line_length_nm)
            line_specs.append((x0, y0, th, pitch, length))
            for k in range(int(length / pitch)):
                if r_d.random() < style.line_fill:
                    add(cls, x0 + k * pitch * math.cos(th), y0 + k * pitch * math.sin(th))
    added = 0
    for _ in range(20 * n):
        if added >= n:
            break
        r, c = r_d.uniform(-2, ny + 1), r_d.uniform(-2, nx + 1)
        x, y = (float(q) * 1e9 for q in geometry.pixel_to_scanner(r, c))
        added += add(str(r_d.choice(surf.classes, p=weights)), x, y)

    # Contaminated patches (no defects under them; not in the truth).
    r_p = np.random.default_rng([seed, key, 1804])
    blobs = []
    n_patches = 0
    if r_p.random() < style.patch_prob:
        for _ in range(int(r_p.integers(style.patches[0], style.patches[1] + 1))):
            cx, cy = (float(q) * 1e9 for q in geometry.pixel_to_scanner(r_p.uniform(0, ny), r_p.uniform(0, nx)))
            rad = r_p.uniform(*style.patch_radius_nm)
            n_patches += 1
            for _ in range(int(r_p.integers(8, 40))):
                a, d = r_p.uniform(0, 2 * np.pi), rad * math.sqrt(r_p.uniform())
                blobs.append((cx + d * math.cos(a), cy + d * math.sin(a), r_p.uniform(0.25, 0.6), r_p.uniform(0.1, 0.4)))
            keep = np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) > rad + radii + 0.5 if len(placed) else np.zeros(0, bool)
            placed = [d for d, k in zip(placed, keep) if k]
            xy, radii = xy[keep], radii[keep]

    mask = np.zeros((ny, nx), np.uint8)
    if draw_defects:
        for d in placed:
            sel = (np.abs(px - d.x) < 3.5) & (np.abs(py - d.y) < 3.5)
            if not sel.any():
                continue
            dx, dy = px[sel] - d.x, py[sel] - d.y
            du = dx * math.cos(d.theta) + dy * math.sin(d.theta)
            dv = -dx * math.sin(d.theta) + dy * math.cos(d.theta)
            z[sel] += _defect_height(surface, d.cls, du, dv, d.p, empty)
            inside = np.hypot(dx, dy) <= d.radius
            sub = mask[sel]
            sub[inside] = surf.classes.index(d.cls) + 1
            mask[sel] = sub
    for bx, by, s, h in blobs:
        z += h * np.exp(-0.5 * ((px - bx) ** 2 + (py - by) ** 2) / s ** 2)

    # Through the tip; then the instrument: lag, noise in acquisition order, glitches, tilt, bow.
    r_t = np.random.default_rng([seed, key, 1805])
    z, tip_info = _tip_dilate(z, nm_px, r_t, style)
    r_n = np.random.default_rng([seed, key, 1806])
    tau = float(r_n.uniform(*style.feedback_lag_px))
    frames = [_lag(z, tau, True), _lag(z, tau, False)]
    glitched: list[int] = []
    total = 2 * nx * ny
    line_of = np.arange(ny) if direction == "down" else np.arange(ny)[::-1]
    k_fwd = 2 * line_of[:, None] * nx + np.arange(nx)[None, :]
    k_bwd = 2 * line_of[:, None] * nx + nx + (nx - 1 - np.arange(nx))[None, :]
    noise = (_pink(total, r_n) * r_n.uniform(*style.pink_nm)
             + _telegraph(total, int(r_n.integers(*style.telegraph_switches)), r_n) * r_n.uniform(*style.telegraph_nm)
             + r_n.normal(0, r_n.uniform(*style.white_nm), total))
    walk = np.cumsum(r_n.normal(0, style.line_walk_nm, ny))
    frames[0] = frames[0] + noise[k_fwd] + walk[:, None]
    frames[1] = frames[1] + noise[k_bwd] + walk[:, None] + r_n.normal(0, 0.002, ny)[:, None]
    n_glitch = int(r_n.integers(style.glitches[0], style.glitches[1] + 1))
    for _ in range(n_glitch):
        r0 = int(r_n.integers(0, ny))
        span = int(r_n.integers(1, 4))
        shift = int(r_n.integers(-8, 9))
        jump = r_n.normal(0, 0.08)
        glitched.extend(range(r0, min(r0 + span, ny)))
        for f in frames:
            f[r0:r0 + span] = np.roll(f[r0:r0 + span], shift, axis=1) + jump + r_n.normal(0, 0.02, (min(span, ny - r0), nx))
    tilt = r_n.normal(0, style.tilt_nm_per_nm, 2)
    bow = r_n.uniform(*style.bow_nm)
    ramp = tilt[0] * (px - centre[0]) + tilt[1] * (py - centre[1]) + bow * ((rows / max(ny - 1, 1)) - 0.5) ** 2
    frames = [f + ramp for f in frames]

    setpoint = float(np.round(r_n.uniform(10, 300))) * 1e-12 * (1 if bias_v >= 0 else -1)
    current = [(setpoint * (1 + 2.0 * np.gradient(f, axis=1) * s + r_n.normal(0, 0.02, f.shape))).astype(np.float32)
               for f, s in zip(frames, (1, -1))]
    z_offset = float(r_n.uniform(-50, 50))
    z_chan = Channel("Z", "m", ((frames[0] + z_offset) * 1e-9).astype(np.float32),
                     ((frames[1] + z_offset) * 1e-9).astype(np.float32), index=14)
    i_chan = Channel("Current", "A", current[0], current[1], index=0)
    scan = dataclasses.replace(geometry, channels=[z_chan, i_chan],
                               acquired=dt.datetime(2026, 3, 1) + dt.timedelta(seconds=int(seed) % 10_000_000),
                               header={"COMMENT": f"foreign microscope: {surf.title}, seed {seed}",
                                       "Z-CONTROLLER": f"\n\tSetpoint\n\t{setpoint:.3E} A"})
    defects = []
    for d in (placed if draw_defects else []):
        row, col = (float(q) for q in scan.scanner_to_pixel(d.x * 1e-9, d.y * 1e-9))
        if -0.5 <= row < ny - 0.5 and -0.5 <= col < nx - 0.5:
            x_m, y_m = scan.pixel_to_scanner(row, col)
            defects.append(TruthDefect(d.cls, row, col, float(x_m), float(y_m), float(d.radius)))
    info = {"style": "foreign", "tip": tip_info, "density_per_nm2": round(density, 5), "lines": len(line_specs),
            "patches": n_patches, "glitches": n_glitch, "glitched_rows": sorted(set(glitched)), "feedback_lag_px": round(tau, 3), "steps": len(edges)}
    return scan, Truth(surface, defects, mask, float(bias_v), seed, info)
