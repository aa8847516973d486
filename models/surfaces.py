"""The surfaces stmwatch knows: lattice facts and the scale the models see them at.

Lengths are nanometres. The lattice facts are used by the simulator (``models/sim/sample.py``);
their sources are listed in ``docs/simulator.md``.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Surface:
    """A surface: ``nm_per_px`` is the fixed scale every scan is resampled to before the models.

    ``classes`` are the defect classes (their index + 1 is the value in a truth mask).
    ``site_nm`` is the lattice period along the atomic rows, ``row_nm`` the period across them,
    ``step_nm`` the height of a single atomic step. ``rotates_at_steps`` is True where the rows
    turn by 90 degrees across a single step (2x1 / 1x2 domains on (001) surfaces).
    """

    key: str
    title: str
    nm_per_px: float
    classes: tuple[str, ...]
    filled_only: bool = False
    site_nm: float = 0.0
    row_nm: float = 0.0
    step_nm: float = 0.0
    rotates_at_steps: bool = False


SURFACES: dict[str, Surface] = {
    "si001h": Surface(
        "si001h", "Si(001):H", 0.1, ("dangling_bond", "as_incorporated", "vacancy", "ash3_fragment"),
        site_nm=0.384, row_nm=0.768, step_nm=0.136, rotates_at_steps=True),
    "ge001": Surface(
        "ge001", "Ge(001)", 0.1, ("dimer_vacancy", "as_incorporated", "c_defect", "adsorbate"),
        site_nm=0.400, row_nm=0.800, step_nm=0.141, rotates_at_steps=True),
    "tio2110": Surface(
        "tio2110", "TiO2(110)", 0.1, ("o_vacancy", "hydroxyl", "ti_interstitial", "adatom"), True,
        site_nm=0.296, row_nm=0.649, step_nm=0.325, rotates_at_steps=False),
}


def get_surface(key: str) -> Surface:
    try:
        return SURFACES[key]
    except KeyError:
        raise KeyError(f"unknown surface {key!r}; known surfaces are {sorted(SURFACES)}") from None
