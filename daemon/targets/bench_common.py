"""Helpers shared by the benchmarks: the simulated scan they time, medians, table output."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def bench_scan(surface: str, pixels: int, range_nm: float | None = None, seed: int = 17, n_defects: int = 30):
    """A simulated ``pixels``² scan of ``surface`` (Z and current, forward and backward, display
    frame), ``range_nm`` wide (default: the surface's model scale, so model image = scan)."""
    from stmwatch.models.sim.simulate import simulate_scan

    scan, _ = simulate_scan(surface, seed, pixels=(pixels, pixels), range_nm=range_nm, n_defects=n_defects)
    return scan


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def stats(values: list[float]) -> dict:
    """Median and 95th percentile (None when empty) and the count."""
    return {"median": round(float(np.median(values)), 2) if values else None,
            "p95": round(float(np.percentile(values, 95)), 2) if values else None, "n": len(values)}


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table (figure, value) with a title, via rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
