"""Surfaces for the STM simulator: lattices, steps, domains and defects as functions of position.

Everything here is in **nanometres** and works on plain numpy arrays of sample positions
``x, y`` (any shape; x right, y up -- the scanner frame of ``shared/docs/conventions.md`` before
drift moves the sample). :func:`render` returns the apparent height (nm) the tip would record
at each position; nothing here knows about pixels, scan directions or artefacts.

The model of one surface (:class:`SurfaceModel`) is drawn once per scan from a seeded generator:
- **steps**: roughly parallel single-atomic step edges with meander; the terrace index grows
  uphill. On Si(001) and Ge(001) the dimer rows turn by 90 degrees across each single step
  (2x1 / 1x2 domains), and the step where the upper terrace's rows run parallel to the edge is
  smooth (S_A) while the other is rough (S_B).
- **lattice**: the apparent corrugation of the reconstructed surface in local lattice coordinates
  ``u`` (along the rows) and ``v`` (across them); filled and empty states look different.
- **domains** (Ge(001) only): regions of c(4x2) and p(2x2) buckling order.
- **defects**: one small analytic shape per class, sitting at a lattice site, with random size,
  brightness, orientation along the row and sub-site; filled/empty looks differ for Si and Ge.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from ..surfaces import Surface

# ---- small helpers -----------------------------------------------------------------------------


def _gauss(du: np.ndarray, dv: np.ndarray, su: float, sv: float, height: float, blur: float) -> np.ndarray:
    """An elliptical Gaussian bump (nm) of widths ``su``/``sv`` seen through a tip of blur ``blur``.

    Blurring widens the bump and lowers it so that its volume stays the same.
    """
    eu, ev = math.hypot(su, blur), math.hypot(sv, blur)
    return (height * su * sv / (eu * ev)) * np.exp(-0.5 * ((du / eu) ** 2 + (dv / ev) ** 2))


def _ring(du: np.ndarray, dv: np.ndarray, radius: float, width: float, depth: float) -> np.ndarray:
    """A dark ring (nm, negative for positive ``depth``): the halo around a charged defect."""
    r = np.hypot(du, dv)
    return -depth * np.exp(-0.5 * ((r - radius) / width) ** 2)


def _nearest(value: np.ndarray, period: float, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest lattice line ``phase + i*period`` and the signed distance to it."""
    i = np.floor((value - phase) / period + 0.5)
    return i, value - phase - i * period


# ---- steps -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Steps:
    """Single-atomic step edges (nm). Edge ``k`` is the line ``p = edges[k] + meander_k(q)`` where
    ``p`` is the distance along ``normal`` (radians, pointing uphill) and ``q`` across it."""

    normal: float
    edges: np.ndarray  # (K,) nm
    amplitude: np.ndarray  # (K, M) meander amplitude of each wave, nm
    waves: np.ndarray  # (K, M) wavenumbers, rad/nm
    phases: np.ndarray  # (K, M) rad
    height: float  # nm per step
    width: float = 0.35  # nm over which an edge rises
    first: int = 0  # index of the lowest terrace (sets the parity of the domains)

    def _pq(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.normal), math.sin(self.normal)
        return x * c + y * s, -x * s + y * c

    def _edge_distance(self, k: int, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        # The meander depends on q only: tabulate it every 0.02 nm and interpolate (fast).
        grid = np.arange(q.min() - 0.05, q.max() + 0.05, 0.02)
        meander = (np.sin(grid[:, None] * self.waves[k] + self.phases[k]) * self.amplitude[k]).sum(axis=-1)
        return p - self.edges[k] - np.interp(q, grid, meander)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer terrace index (grows by one uphill across each edge) and height (nm) of the
        staircase, each edge a smooth rise of width ``width``, at each position.

        Only edges that come near the positions are evaluated in full; the others add a whole
        step (or nothing) everywhere."""
        p, q = self._pq(np.asarray(x, float), np.asarray(y, float))
        index = np.full(p.shape, self.first, dtype=np.int64)
        z = np.zeros(p.shape)
        if p.size == 0:
            return index, z
        lo, hi = float(p.min()), float(p.max())
        for k in range(len(self.edges)):
            reach = float(np.abs(self.amplitude[k]).sum()) + 20 * self.width
            if lo - self.edges[k] > reach:  # every position is above this edge
                index += 1
                z += 1.0
            elif hi - self.edges[k] >= -reach:  # the edge passes near: evaluate it
                d = self._edge_distance(k, p, q)
                index += d > 0
                z += 0.5 * (1.0 + np.tanh(np.clip(d / self.width, -30, 30)))
        return index, z * self.height

    def terrace(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Integer terrace index at each position (see :meth:`evaluate`)."""
        return self.evaluate(x, y)[0]

    def topography(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (nm) of the staircase at each position (see :meth:`evaluate`)."""
        return self.evaluate(x, y)[1]


def draw_steps(surface: Surface, rng: np.random.Generator, centre: tuple[float, float], radius: float,
               normal: float) -> Steps:
    """Random steps over a disc of ``radius`` nm around ``centre``: none (one terrace, a third of
    the time), or edges 6-40 nm apart. Rough S_B and smooth S_A edges alternate on (001)."""
    first = int(rng.integers(0, 2))
    n_waves = 4
    if rng.random() < 0.33 or radius < 3:
        empty = np.zeros((0, n_waves))
        return Steps(normal, np.zeros(0), empty, empty, empty, surface.step_nm, first=first)
    spacing = rng.uniform(6.0, 40.0)
    p0 = centre[0] * math.cos(normal) + centre[1] * math.sin(normal)
    start = p0 - radius - rng.uniform(0, spacing)
    edges = start + spacing * np.arange(int(2 * radius / spacing) + 2) + rng.normal(0, 0.15 * spacing, 1)
    edges = np.sort(edges + rng.normal(0, 0.12 * spacing, len(edges)))
    k = np.arange(len(edges))
    if surface.rotates_at_steps:
        # Upper terrace k+1 has rows along the edge when (first + k + 1) is even: smooth S_A.
        smooth = (first + k + 1) % 2 == 0
        amplitude = np.where(smooth, rng.uniform(0.1, 0.5, len(k)), rng.uniform(0.8, 2.0, len(k)))
    else:
        amplitude = rng.uniform(0.2, 1.0, len(k))
    # Long waves meander more than short ones (amplitude proportional to wavelength).
    wavelength = rng.uniform(3.0, 40.0, (len(k), n_waves))
    amplitude = amplitude[:, None] * wavelength / 40.0
    waves = 2 * math.pi / wavelength
    phases = rng.uniform(0, 2 * math.pi, (len(k), n_waves))
    return Steps(normal, edges, amplitude, waves, phases, surface.step_nm, first=first)


# ---- domains -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Domains:
    """A smooth random field (in a terrace's lattice coordinates, nm) whose sign splits the
    surface into two kinds of domain."""

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    threshold: float

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        field = np.cos(np.multiply.outer(x, self.kx) + np.multiply.outer(y, self.ky) + self.phase).sum(axis=-1)
        return field > self.threshold


def draw_domains(rng: np.random.Generator) -> Domains:
    n = 5
    k = 2 * math.pi / rng.uniform(8.0, 30.0, n)
    angle = rng.uniform(0, 2 * math.pi, n)
    return Domains(k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * math.pi, n),
                   float(rng.uniform(-1.5, 1.5)))


# ---- lattices ----------------------------------------------------------------------------------
# Each takes local lattice coordinates u (along the rows), v (across), the bias polarity, the tip
# blur (nm) and (for Ge) the c(4x2)/p(2x2) domains, and returns the corrugation in nm.


def _g1(d: np.ndarray, sigma: float, blur: float) -> np.ndarray:
    """A 1-D Gaussian profile of width ``sigma`` (nm) blurred by the tip, peak 1 before blurring."""
    e = math.hypot(sigma, blur)
    return (sigma / e) * np.exp(-0.5 * (d / e) ** 2)


def lattice_si001h(u, v, filled: bool, blur: float, domains=None) -> np.ndarray:
    """Si(001):H 2x1: rows of H-terminated dimers 0.768 nm apart, dimers 0.384 nm apart along the
    row. Filled states: one oval per dimer (the Si-H bonding states); empty states: the two atoms
    of each dimer (0.23 nm apart) as a pair of lobes, rows lower and broader."""
    _, dv = _nearest(v, 0.768)
    _, du = _nearest(u, 0.384)
    if filled:
        return 0.07 * _g1(dv, 0.2, blur) * (0.55 + 0.45 * _g1(du, 0.13, blur))
    pair = _g1(dv - 0.115, 0.11, blur) + _g1(dv + 0.115, 0.11, blur)
    return 0.05 * (0.45 * _g1(dv, 0.24, blur) + 0.55 * pair * _g1(du, 0.12, blur))


def lattice_ge001(u, v, filled: bool, blur: float, domains=None) -> np.ndarray:
    """Ge(001): rows of buckled dimers (0.800 nm apart, 0.400 nm along the row). The up atom of
    each dimer alternates along the row (zig-zag); neighbouring rows are out of phase in c(4x2)
    domains and in phase in p(2x2) (``domains.inside`` at each dimer's site says c(4x2))."""
    i, dv = _nearest(v, 0.800)
    j, du = _nearest(u, 0.400)
    phase = i if domains is None else np.where(domains.inside(j * 0.400, i * 0.800), i, 0)
    side = np.where((j + phase) % 2 == 0, 1.0, -1.0)
    if filled:
        return 0.025 * _g1(dv, 0.25, blur) + 0.07 * _g1(du, 0.14, blur) * _g1(dv - 0.125 * side, 0.13, blur)
    return 0.03 * _g1(dv, 0.28, blur) + 0.035 * _g1(du, 0.17, blur) * _g1(dv + 0.125 * side, 0.16, blur)


def lattice_tio2110(u, v, filled: bool, blur: float, domains=None) -> np.ndarray:
    """TiO2(110) 1x1: bright rows 0.649 nm apart along [001] (u), dark bridging-oxygen rows
    between them, and a faint 0.296 nm modulation along the rows (one Ti per cell)."""
    _, dv = _nearest(v, 0.649)
    _, du = _nearest(u, 0.296)
    return 0.08 * _g1(dv, 0.15, blur) * (0.85 + 0.15 * _g1(du, 0.09, blur))


LATTICES: dict[str, Callable] = {"si001h": lattice_si001h, "ge001": lattice_ge001, "tio2110": lattice_tio2110}


# ---- defects -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Defect:
    """One defect on the sample: class, centre (nm, sample frame), the orientation of its
    terrace's rows (radians), and the random parameters of its shape."""

    cls: str
    x: float
    y: float
    theta: float
    radius: float  # nm: the footprint used for the mask and for spacing defects apart
    params: dict


# Each class: (site, draw, shape). ``site(rng)`` → (du, dv) offset of its centre from a lattice site
# (dimer centre / Ti row) in nm; ``draw(rng)`` → params with "radius"; ``shape(du, dv, p, filled,
# blur)`` → height (nm) in the defect's own frame (du along the row, dv across).

def _side(rng) -> float:
    return float(rng.choice([-1.0, 1.0]))


# Si(001):H -----------------------------------------------------------------------------------------
def _si_db_draw(rng):
    return {"h": rng.uniform(0.08, 0.13), "s": rng.uniform(0.26, 0.34),
            "he": rng.uniform(0.16, 0.24), "se": rng.uniform(0.40, 0.52), "halo": rng.uniform(0.01, 0.03),
            "radius": 0.8}


def _si_db_shape(du, dv, p, filled, blur):  # centred on the atom that lost its H
    if filled:
        return _gauss(du, dv, p["s"], p["s"], p["h"], blur)
    return _gauss(du, dv, p["se"], p["se"], p["he"], blur) + _ring(du, dv, 0.9, 0.2, p["halo"])


def _si_as_draw(rng):
    return {"side": _side(rng), "h": rng.uniform(0.05, 0.07), "b": rng.uniform(0.06, 0.09),
            "he": rng.uniform(0.07, 0.11), "sv": rng.uniform(0.38, 0.5), "radius": 0.8}


def _si_as_shape(du, dv, p, filled, blur):
    if filled:  # the dimer sinks, with a small bright lobe on the As side
        return (-_gauss(du, dv, 0.22, 0.35, p["h"], blur)
                + _gauss(du, dv - 0.13 * p["side"], 0.15, 0.14, p["b"], blur))
    return _gauss(du, dv, 0.24, p["sv"], p["he"], blur)  # a bright oval across the row


def _si_vac_draw(rng):
    n = int(rng.choice([1, 1, 1, 2]))
    return {"n": n, "h": rng.uniform(0.08, 0.12), "rim": rng.uniform(0.015, 0.035), "radius": 0.55 + 0.2 * n}


def _si_vac_shape(du, dv, p, filled, blur):
    n = p["n"]
    dark = -_gauss(du, dv, 0.2 * n, 0.33, p["h"], blur)
    if filled:
        return dark
    rims = sum(_gauss(du - s * 0.384 * (n / 2 + 0.5), dv, 0.12, 0.3, p["rim"], blur) for s in (-1, 1))
    return 0.8 * dark + rims


def _si_ash_draw(rng):
    return {"dir": _side(rng), "h": rng.uniform(0.06, 0.09), "he": rng.uniform(0.1, 0.14),
            "s": rng.uniform(0.2, 0.26), "radius": 0.9}


def _si_ash_shape(du, dv, p, filled, blur):  # centred on one side of the row, between two dimers
    if filled:  # two lobes along the row on one side: a fragment bridging two dimers
        return sum(_gauss(du - s * 0.192, dv, p["s"], p["s"] * 0.9, p["h"], blur) for s in (-1, 1))
    return (_gauss(du - p["dir"] * 0.192, dv, p["s"] * 1.3, p["s"] * 1.2, p["he"], blur)
            + _gauss(du + p["dir"] * 0.192, dv, p["s"], p["s"], 0.35 * p["he"], blur))


# Ge(001) ---------------------------------------------------------------------------------------------
def _ge_dv_draw(rng):
    n = int(rng.choice([1, 1, 2, 3]))
    return {"n": n, "h": rng.uniform(0.08, 0.13), "radius": 0.55 + 0.2 * n}


def _ge_dv_shape(du, dv, p, filled, blur):
    n = p["n"]
    if filled:
        return -_gauss(du, dv, 0.21 * n, 0.34, p["h"], blur)
    return -_gauss(du, dv, 0.23 * n, 0.48, 0.6 * p["h"], blur)


def _ge_as_draw(rng):
    return {"side": _side(rng), "h": rng.uniform(0.13, 0.17), "d": rng.uniform(0.05, 0.07),
            "e": rng.uniform(0.07, 0.1), "radius": 0.75}


def _ge_as_shape(du, dv, p, filled, blur):
    if filled:  # As sits up: bright on its side, the Ge partner dark
        return (_gauss(du, dv - 0.125 * p["side"], 0.16, 0.15, p["h"], blur)
                - _gauss(du, dv + 0.125 * p["side"], 0.15, 0.15, p["d"], blur))
    return -_gauss(du, dv, 0.2, 0.32, p["e"], blur)  # the dimer is dark in empty states


def _ge_c_draw(rng):
    return {"dir": _side(rng), "h": rng.uniform(0.1, 0.13), "he": rng.uniform(0.14, 0.2),
            "s": rng.uniform(0.3, 0.4), "radius": 0.9}


def _ge_c_shape(du, dv, p, filled, blur):
    du = du - p["dir"] * 0.2  # centred between two dimers
    if filled:  # both atoms of two dimers raised (butterfly) with a dark centre
        lobes = sum(_gauss(du, dv - s * 0.2, 0.3, 0.14, p["h"], blur) for s in (-1, 1))
        return lobes - _gauss(du, dv, 0.16, 0.12, 0.5 * p["h"], blur)
    return _gauss(du, dv, p["s"], p["s"] * 0.85, p["he"], blur)


def _ge_ads_draw(rng):
    return {"h": rng.uniform(0.15, 0.3), "s": rng.uniform(0.35, 0.55), "lobes": int(rng.choice([1, 1, 2])),
            "dir": _side(rng), "radius": 1.2}


def _ads_shape(du, dv, p, filled, blur):
    scale = 1.0 if filled else 1.15
    if p["lobes"] == 1:
        return _gauss(du, dv, p["s"] * scale, p["s"] * scale, p["h"], blur)
    return sum(_gauss(du - s * 0.3 * p["dir"], dv, 0.75 * p["s"] * scale, 0.75 * p["s"] * scale, 0.85 * p["h"], blur)
               for s in (-1, 1))


# TiO2(110) (filled states only) ---------------------------------------------------------------------
def _ti_ov_draw(rng):
    return {"h": rng.uniform(0.05, 0.07), "su": rng.uniform(0.22, 0.28), "radius": 0.5}


def _ti_ov_shape(du, dv, p, filled, blur):
    return _gauss(du, dv, p["su"], 0.17, p["h"], blur)


def _ti_oh_draw(rng):
    return {"h": rng.uniform(0.1, 0.13), "s": rng.uniform(0.25, 0.31), "radius": 0.6}


def _ti_oh_shape(du, dv, p, filled, blur):
    return _gauss(du, dv, p["s"], 0.85 * p["s"], p["h"], blur)


def _ti_int_draw(rng):
    return {"h": rng.uniform(0.1, 0.14), "s": rng.uniform(0.35, 0.45), "radius": 0.8}


def _ti_int_shape(du, dv, p, filled, blur):
    return _gauss(du, dv, 1.3 * p["s"], p["s"], p["h"], blur)


def _ti_ad_draw(rng):
    return {"h": rng.uniform(0.2, 0.45), "s": rng.uniform(0.4, 0.65), "lobes": int(rng.choice([1, 2])),
            "dir": _side(rng), "radius": 1.3}


# site offsets from the nearest lattice site (u along row, v across), nm
def _at_dimer(rng):
    return 0.0, 0.0


def _at_atom(rng):  # one atom of a dimer (Si: 0.115 nm off the row centre)
    return 0.0, 0.115 * _side(rng)


def _between_dimers_at_atom(rng):
    return 0.192, 0.115 * _side(rng)


def _on_o_row(rng):
    return float(rng.uniform(-0.05, 0.05)), 0.649 / 2


def _on_ti_row(rng):
    return 0.296 / 2, 0.0


def _anywhere(rng):
    return float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.3, 0.3))


DefectKind = tuple[Callable, Callable, Callable]

DEFECTS: dict[str, dict[str, DefectKind]] = {
    "si001h": {
        "dangling_bond": (_at_atom, _si_db_draw, _si_db_shape),
        "as_incorporated": (_at_dimer, _si_as_draw, _si_as_shape),
        "vacancy": (_at_dimer, _si_vac_draw, _si_vac_shape),
        "ash3_fragment": (_between_dimers_at_atom, _si_ash_draw, _si_ash_shape),
    },
    "ge001": {
        "dimer_vacancy": (_at_dimer, _ge_dv_draw, _ge_dv_shape),
        "as_incorporated": (_at_dimer, _ge_as_draw, _ge_as_shape),
        "c_defect": (_at_dimer, _ge_c_draw, _ge_c_shape),
        "adsorbate": (_anywhere, _ge_ads_draw, _ads_shape),
    },
    "tio2110": {
        "o_vacancy": (_on_o_row, _ti_ov_draw, _ti_ov_shape),
        "hydroxyl": (_on_o_row, _ti_oh_draw, _ti_oh_shape),
        "ti_interstitial": (_on_ti_row, _ti_int_draw, _ti_int_shape),
        "adatom": (_anywhere, _ti_ad_draw, _ads_shape),
    },
}


# ---- the whole surface -------------------------------------------------------------------------


@dataclasses.dataclass
class SurfaceModel:
    """Everything drawn for one simulated sample: steps, lattice orientation, domains, defects."""

    surface: Surface
    steps: Steps
    theta0: float  # rad: row direction on even terraces
    origin: tuple[float, float]  # nm: a lattice site on terrace 0
    domains: Domains | None
    defects: list[Defect]
    # (N, 4): x, y, width, height (nm) of shallow electronic bumps and dips from charges below
    # the surface (subsurface dopants): part of a real surface's look, not defects to find.
    bumps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4)))

    def orientation(self, terrace: np.ndarray) -> np.ndarray:
        """Row direction (rad) on each terrace."""
        if self.surface.rotates_at_steps:
            return self.theta0 + (terrace % 2) * (math.pi / 2)
        return np.full(np.shape(terrace), self.theta0)

    def site_shift(self, terrace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lattice origin (nm) of each terrace: one step down shifts the lattice by half a site
        along the rows (Si, Ge) or half a row across them (TiO2)."""
        s = self.surface
        if s.rotates_at_steps:
            half, ang = 0.5 * s.site_nm, self.theta0
        else:
            half, ang = 0.5 * s.row_nm, self.theta0 + math.pi / 2
        return (self.origin[0] + terrace * half * math.cos(ang), self.origin[1] + terrace * half * math.sin(ang))

    def local(self, x, y, terrace) -> tuple[np.ndarray, np.ndarray]:
        """Lattice coordinates ``(u, v)`` (nm, along and across the rows) on the given terrace."""
        theta = self.orientation(terrace)
        ox, oy = self.site_shift(terrace)
        c, s = np.cos(theta), np.sin(theta)
        dx, dy = x - ox, y - oy
        return dx * c + dy * s, -dx * s + dy * c

    def from_local(self, u, v, terrace: int) -> tuple[float, float]:
        theta = float(self.orientation(np.array(terrace)))
        ox, oy = self.site_shift(np.array(terrace))
        c, s = math.cos(theta), math.sin(theta)
        return float(ox + u * c - v * s), float(oy + u * s + v * c)


def draw_surface(surface: Surface, rng: np.random.Generator, centre: tuple[float, float],
                 radius: float) -> SurfaceModel:
    """A random sample (without defects) around ``centre`` (nm), big enough for a disc of ``radius``.

    The rows run along x or y (within a few degrees) 70 % of the time, else at any angle."""
    if rng.random() < 0.3:
        theta0 = float(rng.uniform(0, math.pi))
    else:
        theta0 = float(rng.choice([0, math.pi / 2]) + rng.normal(0, 0.05))
    # Steps on (001) run roughly along one of the row directions; on TiO2(110) mostly along [001].
    normal = theta0 + math.pi / 2 + float(rng.normal(0, 0.15)) + (math.pi if rng.random() < 0.5 else 0.0)
    if surface.rotates_at_steps and rng.random() < 0.5:
        normal += math.pi / 2
    steps = draw_steps(surface, rng, centre, radius, normal)
    origin = (float(rng.uniform(0, 2)), float(rng.uniform(0, 2)))
    domains = draw_domains(rng) if surface.key == "ge001" else None
    return SurfaceModel(surface, steps, theta0, origin, domains, [])


def draw_bumps(rng: np.random.Generator, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Subsurface charges over a disc (nm): 0-0.01 per nm^2, 0.8-2.5 nm wide, +-5-25 pm high."""
    n = int(rng.poisson(rng.uniform(0.0, 0.01) * math.pi * radius ** 2))
    r = radius * np.sqrt(rng.random(n))
    a = rng.uniform(0, 2 * math.pi, n)
    height = rng.uniform(0.005, 0.025, n) * rng.choice([-1.0, 1.0], n, p=[0.3, 0.7])
    return np.column_stack([centre[0] + r * np.cos(a), centre[1] + r * np.sin(a),
                            rng.uniform(0.8, 2.5, n), height])


def place_defect(model: SurfaceModel, cls: str, x: float, y: float, rng: np.random.Generator) -> Defect | None:
    """A defect of class ``cls`` at the lattice site nearest ``(x, y)`` nm, or None where it would
    straddle a step edge."""
    s = model.surface
    site, draw, _ = DEFECTS[s.key][cls]
    params = draw(rng)
    radius = float(params["radius"])
    terrace = int(model.steps.terrace(np.array(x), np.array(y)))
    u, v = model.local(np.array(x), np.array(y), np.array(terrace))
    du, dv = site(rng)
    u = float(np.round((u - du) / s.site_nm) * s.site_nm + du)
    v = float(np.round((v - dv) / s.row_nm) * s.row_nm + dv)
    cx, cy = model.from_local(u, v, terrace)
    ring = np.linspace(0, 2 * math.pi, 8, endpoint=False)
    around = model.steps.terrace(cx + (radius + 0.4) * np.cos(ring), cy + (radius + 0.4) * np.sin(ring))
    if np.any(around != terrace):
        return None
    theta = float(model.orientation(np.array(terrace)))
    return Defect(cls, cx, cy, theta, radius, params)


# ---- rendering ---------------------------------------------------------------------------------


class PointIndex:
    """Finds the positions near a point quickly: positions are binned into square cells (nm)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, cell: float = 2.0):
        self.cell = cell
        ix = np.floor(x.ravel() / cell).astype(np.int64)
        iy = np.floor(y.ravel() / cell).astype(np.int64)
        self.x0, self.y0 = int(ix.min()), int(iy.min())
        self.ny = int(iy.max()) - self.y0 + 1
        key = (ix - self.x0) * self.ny + (iy - self.y0)
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]

    def near(self, x: float, y: float, r: float) -> np.ndarray:
        """Flat indices of every position within the cells that a disc of radius ``r`` touches."""
        c = self.cell
        ylo = max(int(math.floor((y - r) / c)) - self.y0, 0)
        yhi = min(int(math.floor((y + r) / c)) - self.y0, self.ny - 1)
        if yhi < ylo:
            return np.zeros(0, dtype=np.int64)
        parts = []
        for ix in range(int(math.floor((x - r) / c)) - self.x0, int(math.floor((x + r) / c)) - self.x0 + 1):
            lo, hi = np.searchsorted(self.keys, [ix * self.ny + ylo, ix * self.ny + yhi + 1])
            if hi > lo:
                parts.append(self.order[lo:hi])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def render(model: SurfaceModel, x: np.ndarray, y: np.ndarray, filled: bool, blur: float,
           index: PointIndex | None = None) -> np.ndarray:
    """Apparent height (nm) at sample positions ``x, y`` (nm, any equal shapes) for a tip of
    Gaussian blur ``blur`` (nm) at the given bias polarity."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    terrace, z = model.steps.evaluate(x, y)
    u, v = model.local(x, y, terrace)
    z += LATTICES[model.surface.key](u, v, filled, blur, model.domains)
    if model.defects or len(model.bumps):
        index = index or PointIndex(x, y)
        flat_x, flat_y, flat_z = x.ravel(), y.ravel(), z.ravel()  # z.ravel() is a view: z is contiguous
        for bx, by, width, height in model.bumps:
            near = index.near(bx, by, 3 * width)
            if near.size:
                r2 = (flat_x[near] - bx) ** 2 + (flat_y[near] - by) ** 2
                flat_z[near] += height * np.exp(-0.5 * r2 / width ** 2)
        shapes = DEFECTS[model.surface.key]
        for d in model.defects:
            near = index.near(d.x, d.y, 3.0 * d.radius + 3 * blur)
            if near.size == 0:
                continue
            c, s = math.cos(d.theta), math.sin(d.theta)
            dx, dy = flat_x[near] - d.x, flat_y[near] - d.y
            flat_z[near] += shapes[d.cls][2](dx * c + dy * s, -dx * s + dy * c, d.params, filled, blur)
    return z


def defect_mask(model: SurfaceModel, x: np.ndarray, y: np.ndarray, index: PointIndex | None = None) -> np.ndarray:
    """uint8 map at positions ``x, y`` (nm): 0 background, else the class index + 1 of the defect
    whose footprint (a disc of ``radius``) covers the position."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    mask = np.zeros(x.shape, np.uint8)
    flat = mask.ravel()
    index = index or PointIndex(x, y)
    classes = model.surface.classes
    for d in model.defects:
        near = index.near(d.x, d.y, d.radius)
        inside = near[np.hypot(x.ravel()[near] - d.x, y.ravel()[near] - d.y) <= d.radius]
        flat[inside] = classes.index(d.cls) + 1
    return mask
