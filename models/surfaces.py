"""The surfaces stmwatch knows: lattice facts and the scale the models see them at."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Surface:
    """A surface: ``nm_per_px`` is the fixed scale every scan is resampled to before the models."""

    key: str
    title: str
    nm_per_px: float
    classes: tuple[str, ...]
    filled_only: bool = False


SURFACES: dict[str, Surface] = {
    "si001h": Surface("si001h", "Si(001):H", 0.1, ("dangling_bond", "as_incorporated", "vacancy", "ash3_fragment")),
    "ge001": Surface("ge001", "Ge(001)", 0.1, ("dimer_vacancy", "as_incorporated", "c_defect", "adsorbate")),
    "tio2110": Surface("tio2110", "TiO2(110)", 0.1, ("o_vacancy", "hydroxyl", "ti_interstitial", "adatom"), True),
}


def get_surface(key: str) -> Surface:
    try:
        return SURFACES[key]
    except KeyError:
        raise KeyError(f"unknown surface {key!r}; known surfaces are {sorted(SURFACES)}") from None
