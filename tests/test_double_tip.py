"""Double-tip ghosts (models/double_tip.py): the shared offset is found, the fainter copies dropped,
and independent defects are left alone."""
import numpy as np

from stmwatch.models.double_tip import find_double_tip


def spread_points(n: int, size: float, min_gap: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` random points in a ``size`` square, at least ``min_gap`` apart (model pixels)."""
    points: list[np.ndarray] = []
    while len(points) < n:
        p = rng.uniform(0, size, 2)
        if all(np.hypot(*(p - q)) >= min_gap for q in points):
            points.append(p)
    return np.array(points)


def test_ghosts_at_one_offset_are_found_and_the_fainter_copies_dropped():
    rng = np.random.default_rng(1)
    real = spread_points(30, 400, 30, rng)
    offset = np.array([7.0, -5.0])  # 0.86 nm at 0.1 nm per pixel
    ghosts = real[:20] + offset + rng.normal(0, 0.3, (20, 2))  # the network found 20 of the 30 ghosts
    points = np.concatenate([real, ghosts])
    mass = np.concatenate([rng.uniform(20, 30, 30), rng.uniform(15, 25, 20)])  # ghosts fainter, not always
    found = find_double_tip(points, mass)
    assert found is not None and found.pairs == 20
    assert np.hypot(*(np.array(found.offset_px) - offset)) < 0.3
    assert found.ghosts == tuple(range(30, 50))


def test_the_ghost_side_follows_the_mass():
    rng = np.random.default_rng(2)
    real = spread_points(12, 300, 30, rng)
    points = np.concatenate([real, real + (0.0, 12.0)])
    mass = np.concatenate([np.full(12, 10.0), np.full(12, 20.0)])  # the shifted copies are the strong ones
    found = find_double_tip(points, mass)
    assert found is not None
    assert np.allclose(found.offset_px, (0.0, -12.0), atol=0.2)
    assert found.ghosts == tuple(range(12))


def test_independent_defects_are_not_a_double_tip():
    rng = np.random.default_rng(3)
    for n in (5, 40, 300):  # up to 300 defects in a 100 nm square: many pairs closer than 2.5 nm
        points = spread_points(n, 1000, 5, rng)
        assert find_double_tip(points, rng.uniform(5, 30, n)) is None
    assert find_double_tip(np.zeros((0, 2)), np.zeros(0)) is None


def test_offset_beyond_the_search_range_is_ignored():
    rng = np.random.default_rng(4)
    real = spread_points(20, 400, 40, rng)
    points = np.concatenate([real, real + (30.0, 0.0)])  # 3 nm: beyond max_nm = 2.5
    assert find_double_tip(points, np.ones(40)) is None
    assert find_double_tip(points, np.ones(40), max_nm=3.5) is not None
