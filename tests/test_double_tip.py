"""Double-tip ghosts (models/double_tip.py): the shared offset is found, the fainter copies dropped,
and independent defects are left alone."""
import numpy as np

from stmwatch.models.double_tip import feature_band, find_double_tip, resolve_double_tip


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


def lattice_sites(n: int, size_nm: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct random sites of the Si(001) 2x1 lattice (0.384 nm along, 0.768 nm across the
    rows) in a ``size_nm`` square, as model pixels of 0.1 nm with 0.03 nm of position noise."""
    per_row, rows = int(size_nm / 0.384), int(size_nm / 0.768)
    r, c = np.divmod(rng.choice(per_row * rows, n, replace=False), per_row)
    return np.stack([r * 7.68, c * 3.84], axis=1) + rng.normal(0, 0.3, (n, 2))


def test_defects_on_lattice_sites_are_not_a_double_tip_but_their_ghosts_are():
    """Independent defects on lattice sites pile up on the lattice vectors (many alike), a double
    tip on one vector: only the second is a double tip."""
    rng = np.random.default_rng(5)
    false = sum(find_double_tip(lattice_sites(40, 20, rng), rng.uniform(10, 20, 40)) is not None for _ in range(30))
    assert false <= 2  # measured 1 in 50
    found = 0
    for _ in range(30):
        real = lattice_sites(40, 20, rng)
        offset = np.array([9.0, -11.0])  # 1.42 nm
        seen = rng.random(40) < 0.5
        ghosts = real[seen] + offset + rng.normal(0, 0.3, (seen.sum(), 2))
        result = find_double_tip(np.concatenate([real, ghosts]),
                                 np.concatenate([rng.uniform(12, 20, 40), rng.uniform(8, 16, seen.sum())]))
        found += result is not None and np.hypot(*(np.array(result.offset_px) - offset)) < 1.5
    assert found >= 25  # measured 49 in 50


def test_thousands_of_detections_in_bounded_memory():
    rng = np.random.default_rng(6)
    real = spread_points(1000, 3000, 12, rng)
    tiles = ((0, 0), (0, 3000), (0, 6000), (3000, 0), (3000, 3000))
    points = np.concatenate([real + tile for tile in tiles])  # 5000 defects in a 600 x 900 nm scan
    points = np.concatenate([points, points[:2000] + (4.0, 12.0)])  # 7000 detections, 2000 ghost pairs
    found = find_double_tip(points, np.concatenate([np.full(5000, 20.0), np.full(2000, 10.0)]))
    assert found is not None and found.pairs == 2000 and found.ghosts == tuple(range(5000, 7000))


# ---- from the image (resolve_double_tip) ---------------------------------------------------------


def surface_image(features: np.ndarray, size: int, rng: np.random.Generator, height: float = 0.1) -> np.ndarray:
    """A Si(001)-like height map (nm) on a ``size`` square of 0.1 nm pixels: dimer rows 0.768 nm
    apart (columns), 0.384 nm along them, plus Gaussian protrusions (sigma 0.25 nm) at ``features``
    ``(n, 2)`` (row, col in pixels)."""
    r, c = np.mgrid[0:size, 0:size].astype(float)
    z = 0.04 * np.cos(2 * np.pi * c / 7.68) + 0.01 * np.cos(2 * np.pi * r / 3.84)
    for fr, fc in features:
        z += height * rng.uniform(0.8, 1.2) * np.exp(-((r - fr) ** 2 + (c - fc) ** 2) / (2 * 2.5 ** 2))
    return z


def two_apex_scan(drop: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, real features, offset)``: 30 protrusions on a Si(001)-like lattice seen by two
    apexes, the second ``drop`` nm further from the surface and offset by (7, -5) pixels."""
    rng = np.random.default_rng(seed)
    real = spread_points(30, 260, 30, rng) + 20
    offset = np.array([7.0, -5.0])
    single = surface_image(real, 300, rng)
    shifted = np.roll(single, tuple(offset.astype(int)), axis=(0, 1))
    return np.maximum(single, shifted - drop) + rng.normal(0, 0.004, single.shape), real, offset


def assert_put_right(found, ghosts: range, moved: range, real_alone: np.ndarray) -> None:
    """``found`` drops the detections ``ghosts`` and moves ``moved`` onto ``real_alone`` (0.15 nm)."""
    assert found.ghosts == tuple(ghosts)
    assert [k for k, _, _ in found.moved] == list(moved)
    moved_to = np.array([(row, col) for _, row, col in found.moved])
    assert np.hypot(*(moved_to - real_alone).T).max() < 1.5


def test_a_double_tip_in_the_image_gives_the_offset_with_its_sign_and_puts_each_ghost_right():
    # Two apexes: the second, 0.02 nm further from the surface, sees everything shifted by offset (0.86 nm).
    image, real, offset = two_apex_scan(0.02, seed=7)
    # The network marked 20 real features alone, 4 with their ghost too, and the ghost alone of 6.
    points = np.concatenate([real[:24], real[20:24] + offset, real[24:] + offset])
    found = resolve_double_tip(points, np.ones(len(points)), image, np.ones(image.shape, bool))
    assert found is not None and found.method == "image"
    # the visible part of a copy leans a little towards where the second apex sees above the lattice
    assert np.hypot(*(np.array(found.offset_px) - offset)) < 1.2
    assert_put_right(found, range(24, 28), range(28, 34), real[24:])


def test_a_double_tip_the_network_saw_through_is_reported_with_nothing_to_put_right():
    """Only the real copies detected: no detection changes, but the double tip (copies 0.8 as
    strong as their features) is reported, with its offset; not when ``report_ratio`` asks for
    copies stronger than these."""
    rng = np.random.default_rng(7)
    real = spread_points(30, 260, 30, rng) + 20
    offset = np.array([7.0, -5.0])
    single = surface_image(real, 300, rng)
    image = np.maximum(single, 0.8 * np.roll(single, tuple(offset.astype(int)), axis=(0, 1)))
    image += rng.normal(0, 0.004, single.shape)
    found = resolve_double_tip(real, np.ones(len(real)), image, np.ones(image.shape, bool))
    assert found is not None and found.method == "image" and found.ghosts == () and found.moved == ()
    assert np.hypot(*(np.array(found.offset_px) - offset)) < 1.2
    assert "no detection needed putting right" in found.describe(0.1)
    assert resolve_double_tip(real, np.ones(len(real)), image, np.ones(image.shape, bool), report_ratio=0.95) is None


def test_the_description_gives_the_offset_in_nm_right_and_down_and_says_when_the_side_is_unknown():
    from stmwatch.models.double_tip import DoubleTip

    text = DoubleTip((3.0, -4.0), 2, (5,), ((6, 1.0, 2.0),), "image").describe(0.1)
    assert text.startswith("double tip: a second apex images every feature again 0.50 nm away "
                           "(-0.40 nm right, +0.30 nm down); 1 ghost defect(s) dropped, 1 moved")
    assert "or the opposite way" in DoubleTip((3.0, -4.0), 2, (5,), side_known=False).describe(0.1)
    assert text.endswith("dark defects (pits) may be undercounted: the other apex fills them in")
    # a tied vote of the pairs: equal masses
    points = np.array([[20.0, 20.0], [20.0, 32.0], [60.0, 90.0], [60.0, 102.0], [110.0, 40.0], [110.0, 52.0],
                       [150.0, 150.0], [150.0, 162.0], [200.0, 70.0], [200.0, 82.0]])
    tied = find_double_tip(points, np.ones(len(points)), min_pairs=5)
    assert tied is not None and not tied.side_known and len(tied.ghosts) == 5


def test_defects_on_lattice_sites_with_a_single_tip_are_left_alone():
    rng = np.random.default_rng(8)
    sites = lattice_sites(60, 28, rng) + 10  # many pairs of defects at the same lattice vectors
    image = surface_image(sites, 300, rng) + rng.normal(0, 0.004, (300, 300))
    assert resolve_double_tip(sites, np.ones(len(sites)), image, np.ones(image.shape, bool)) is None


def test_feature_band_takes_out_the_lattice_and_keeps_the_defects():
    rng = np.random.default_rng(9)
    lattice = surface_image(np.zeros((0, 2)), 200, rng) + rng.normal(0, 0.004, (200, 200))
    with_defect = lattice + surface_image(np.array([[100.0, 100.0]]), 200, rng) - surface_image(np.zeros((0, 2)), 200, rng)
    valid = np.ones((200, 200), bool)
    empty, band = feature_band(lattice, valid), feature_band(with_defect, valid)
    assert np.abs(empty).max() < 0.2 * band[100, 100]
    assert np.unravel_index(np.argmax(band), band.shape) == (100, 100)


def double_tip_image(real: np.ndarray, offset: np.ndarray, rng: np.random.Generator, drop: float = 0.02) -> np.ndarray:
    """The height seen by two apexes, the second ``drop`` nm further from the surface and seeing
    everything shifted by ``offset`` (whole pixels): each feature at ``real`` gets a fainter copy
    at ``real + offset``."""
    single = surface_image(real, 300, rng)
    shifted = np.roll(single, tuple(offset.astype(int)), axis=(0, 1))
    return np.maximum(single, shifted - drop) + rng.normal(0, 0.004, single.shape)


def test_both_copies_of_every_feature_marked_the_fainter_ones_are_dropped():
    """With every feature marked twice, half the detections are ghosts: the side comes from the
    copies' brightness, not from which copy was marked more often."""
    for seed in (10, 11, 12):
        rng = np.random.default_rng(seed)
        real = spread_points(30, 260, 30, rng) + 20
        offset = np.array([7.0, -5.0])
        image = double_tip_image(real, offset, rng)
        points = np.concatenate([real, real + offset])
        found = resolve_double_tip(points, np.ones(60), image, np.ones(image.shape, bool))
        assert found is not None and found.moved == ()
        if found.method == "image":
            assert np.hypot(*(np.array(found.offset_px) - offset)) < 1.2
        assert found.ghosts == tuple(range(30, 60))


def test_a_lopsided_feature_with_a_single_tip_is_not_a_double_tip():
    rng = np.random.default_rng(13)
    real = spread_points(20, 200, 25, rng) + 20
    single = surface_image(real, 240, rng)
    image = single + 0.3 * np.roll(single, 3, axis=1) + rng.normal(0, 0.004, single.shape)  # a shoulder 0.3 nm aside
    assert resolve_double_tip(real, np.ones(20), image, np.ones(image.shape, bool)) is None


def test_tiny_images_and_odd_points_do_not_raise():
    rng = np.random.default_rng(14)
    for size in (1, 2, 4, 8):
        image = rng.normal(0, 1, (size, size))
        valid = rng.random((size, size)) < 0.7
        points = rng.uniform(-2, size + 2, (5, 2))
        points[0] = np.nan
        resolve_double_tip(points, np.ones(5), image, valid)
        resolve_double_tip(points, np.ones(5), image, np.zeros((size, size), bool))


def test_the_offset_is_found_beside_a_stronger_two_sided_repeat():
    """Features with a satellite on either side (0.6 nm away, 0.8 times as high): the strongest
    repeat in the band is the satellites', on both sides; the double tip's copy, fainter and on
    one side only, is the offset. The satellites' own ghosts and the dimer rows make a comb of
    one-sided repeats around it, so the offset is found within 0.3 nm, and not in every image:
    measured 16 of these 20 (the previous code, which gave up on the image here, 0 of 20)."""
    offset = np.array([9.0, -11.0])  # 1.42 nm
    right = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        real = spread_points(30, 250, 32, rng) + 25
        satellites = np.concatenate([real + (0.0, 6.0), real - (0.0, 6.0)])
        lattice = surface_image(np.zeros((0, 2)), 300, rng)
        single = surface_image(real, 300, rng) + surface_image(satellites, 300, rng, height=0.08) - lattice
        shifted = np.roll(single, tuple(offset.astype(int)), axis=(0, 1))
        image = np.maximum(single, shifted - 0.03) + rng.normal(0, 0.004, single.shape)
        points = np.concatenate([real[:24], real[24:] + offset])  # 24 real features alone, the ghost alone of 6
        found = resolve_double_tip(points, np.ones(len(points)), image, np.ones(image.shape, bool))
        right += (found is not None and found.method == "image" and found.ghosts == ()
                  and np.hypot(*(np.array(found.offset_px) - offset)) < 3.0
                  and [k for k, _, _ in found.moved] == list(range(24, 30)))
    assert right >= 14


def test_the_operator_hears_of_a_double_tip_with_its_offset():
    """Simulated Si(001):H scans (unrotated, scanned downwards) through the shipped UNet. The
    simulator's second apex sits at ``(dx, dy)`` nm (scanner frame, y up) from the first, so each
    ghost lies at ``p - (dx, dy)``: ``-dx`` nm right and ``+dy`` nm down in the display frame. The
    analysis warns of it with that offset (within 0.15 nm) whether or not any detection needed
    putting right; the same scans without the double tip give no warning."""
    from stmwatch.daemon.config import load_config
    from stmwatch.models.load import load_analyser
    from stmwatch.models.sim.artefacts import artefact_rng, draw_double
    from stmwatch.models.sim.simulate import Artefacts, simulate_scan

    analyser = load_analyser(load_config(None))
    for seed in (9_100_000, 9_100_001, 9_100_004):
        options = dict(pixels=(256, 256), range_nm=25.6, n_defects=40)
        scan, _ = simulate_scan("si001h", seed, artefacts=Artefacts.parse("double_tip"), **options)
        (dx, dy), _ = draw_double(Artefacts.parse("double_tip"), artefact_rng(seed, "double_tip"))
        warnings = analyser.analyse(scan).warnings
        found = analyser.segmenter.last_double_tip
        assert len(warnings) == 1 and warnings[0].startswith("double tip") and found is not None
        down, right = (v * 0.1 for v in found.offset_px)
        assert np.hypot(right + dx, down - dy) < 0.15, (seed, (right, down), (dx, dy))
        single, _ = simulate_scan("si001h", seed, artefacts=Artefacts.parse("none"), **options)
        assert analyser.analyse(single).warnings == []


def test_copies_as_bright_as_their_features_with_pairs_that_disagree_are_not_moved():
    """Two apexes at almost one height (0.003 nm apart): the image shows the offset but cannot tell
    which copy is the ghost (the network marked both copies of 22 features and the real one alone
    of 8, too few to say that it knew; the brightness vote is split). Its guess (the side where
    most detections have their copy) is the right one here, but the pairs' mass vote says the
    other: the side is in doubt, so no detection is moved and the fainter copy (by mass) of each
    pair is dropped, with the side reported as unknown. (The previous code moved or dropped by the
    image's guess alone: a near tie that int8 rounding turned over in two held-out scans.)"""
    from stmwatch.models.double_tip import find_copy_offset

    for seed in (20, 21, 22):
        rng = np.random.default_rng(seed)
        real = spread_points(30, 260, 30, rng) + 20
        offset = np.array([7.0, -5.0])
        image = double_tip_image(real, offset, rng, drop=0.003)
        points = np.concatenate([real, real[:22] + offset])
        side = find_copy_offset(feature_band(image, np.ones(image.shape, bool)), points)
        assert side is not None and side.side_from == "none", side
        assert np.hypot(*(np.array(side.offset_px) - offset)) < 1.2  # the guess is right here
        mass = np.concatenate([rng.uniform(12, 22, 30), rng.uniform(20, 30, 22)])  # most ghosts heavier
        found = resolve_double_tip(points, mass, image, np.ones(image.shape, bool))
        assert found is not None and found.moved == () and not found.side_known
        lighter = tuple(sorted(k if mass[k] < mass[k + 30] else k + 30 for k in range(22)))
        assert found.ghosts == lighter
        assert "or the opposite way" in found.describe(0.1)
        # with the masses on the image's side, the image decides as before
        heavier_real = np.concatenate([np.full(30, 25.0), np.full(22, 15.0)])
        agreeing = resolve_double_tip(points, heavier_real, image, np.ones(image.shape, bool))
        assert agreeing is not None and agreeing.method == "image" and agreeing.ghosts == tuple(range(30, 52))


def test_each_pair_drops_the_fainter_copy_of_every_pair_whatever_the_vote():
    rng = np.random.default_rng(3)
    real = spread_points(20, 300, 30, rng)
    points = np.concatenate([real, real + (6.0, 8.0)])
    mass = np.concatenate([np.full(20, 20.0), np.full(20, 10.0)])
    mass[[0, 1, 2]] = 5.0  # three pairs whose real copy is the fainter
    voted = find_double_tip(points, mass)
    assert voted is not None and voted.side_known and voted.ghosts == tuple(range(20, 40)) and voted.vote == 17 / 20
    each = voted.without_side()  # the same pairs, no side taken
    assert each is not None and not each.side_known and each.ghosts == (0, 1, 2) + tuple(range(23, 40))


# ---- a network that marks both copies alike (resolve_marked_both) ----------------------------------


def test_when_the_network_marks_both_copies_the_fainter_ones_are_dropped_and_lone_ghosts_moved():
    """The detector marked both copies of 24 features and only the ghost of 6. The offset comes
    from the pairs, its side from the copies' strength (the second apex's are 0.02 nm lower)."""
    from stmwatch.models.double_tip import resolve_marked_both

    for seed in range(3):
        image, real, offset = two_apex_scan(0.02, seed)
        points = np.concatenate([real[:24], real[:24] + offset, real[24:] + offset])
        found = resolve_marked_both(points, image, np.ones(image.shape, bool))
        assert found is not None and found.method == "pairs" and found.side_known
        assert np.hypot(*(np.array(found.offset_px) - offset)) < 0.5
        assert_put_right(found, range(24, 48), range(48, 54), real[24:])


def pair_image(real: np.ndarray, offset: np.ndarray, copy_heights: list[float]) -> np.ndarray:
    """A flat 300² image: a Gaussian (sigma 2.5 px) of height 0.1 at each of ``real`` and one of
    ``copy_heights[k]`` at ``real[k] + offset``."""
    r, c = np.mgrid[0:300, 0:300].astype(float)
    image = np.zeros((300, 300))
    for (fr, fc), copy in zip(real, copy_heights):
        for (pr, pc), height in (((fr, fc), 0.10), ((fr + offset[0], fc + offset[1]), copy)):
            image += height * np.exp(-((r - pr) ** 2 + (c - pc) ** 2) / (2 * 2.5 ** 2))
    return image


def test_when_the_copies_do_not_say_which_is_fainter_nothing_is_put_right():
    """Half the pairs have the brighter copy on each side: no side is taken, every detection stays.
    With every copy at +offset fainter, that side is taken."""
    from stmwatch.models.double_tip import fainter_side, resolve_marked_both

    rng = np.random.default_rng(3)
    real = spread_points(24, 260, 30, rng) + 20
    offset = np.array([7.0, -5.0])
    points = np.concatenate([real, real + offset])
    valid = np.ones((300, 300), bool)
    balanced = pair_image(real, offset, [0.09 if k % 2 else 0.11 for k in range(len(real))])
    side, z, pairs = fainter_side(feature_band(balanced, valid), points, offset)
    assert pairs == 24 and abs(z) < 1.5
    found = resolve_marked_both(points, balanced, valid)
    assert found is not None and not found.side_known and found.ghosts == () and found.moved == ()
    assert "or the opposite way" in found.describe(0.1)
    fainter = pair_image(real, offset, [0.09] * len(real))
    side, z, pairs = fainter_side(feature_band(fainter, valid), points, offset)
    assert (side, pairs) == (1, 24) and z > 1.5
    assert fainter_side(feature_band(fainter, valid), points, -offset)[0] == -1  # the same copies, seen the other way
    found = resolve_marked_both(points, fainter, valid)
    assert found.side_known and found.ghosts == tuple(range(24, 48)) and found.moved == ()
