"""Crops of simulated scans with their look (see :mod:`.looks`): training-style or domain-randomised
scans, cut the daemon's way at each true defect. Only the training style and the randomiser are
drawn here (the foreign style is for measuring). Kept apart from :mod:`.looks` because it draws on
the simulator, which the inference modules must not import (pyproject.toml's import contracts)."""
from __future__ import annotations

import logging

import numpy as np

from .looks import LookSet
from .scan_crops import crops_at_truth

log = logging.getLogger(__name__)


def look_crops(surface: str, seed: int, randomised: bool, jitter_px: float = 1.0, pixels: int = 192):
    """``(crops (n, 2, 32, 32), classes (n,), looks (n,))`` of one simulated scan of ``surface``:
    a domain-randomised scan (``randomised``; its own size, 128-``pixels``·2 px) or a training-style
    one (``pixels``², random artefacts and bias), cut at each true defect on an acquired line,
    moved by up to ``jitter_px`` per axis, each crop normalised on its own."""
    from stmwatch.models.sim.artefacts import Artefacts
    from stmwatch.models.sim.randomise import randomised_scan
    from stmwatch.models.sim.simulate import simulate_scan
    from stmwatch.models.surfaces import get_surface

    rng = np.random.default_rng([seed, 29])
    surf = get_surface(surface)
    scan_seed = int(rng.integers(0, 2**31 - 1))
    if randomised:
        scan, truth, style = randomised_scan(surface, scan_seed, pixel_range=(128, 2 * pixels))
        inverted = bool(style.invert)
    else:
        scan, truth = simulate_scan(surface, scan_seed, pixels=(pixels, pixels), range_nm=pixels * surf.nm_per_px,
                                    artefacts=Artefacts.random(rng), style="training")
        inverted = False
    return _cut(surface, scan, truth, inverted, rng, jitter_px)


def _cut(surface: str, scan, truth, inverted: bool, rng: np.random.Generator, jitter_px: float):
    """``(crops, classes, looks)`` of one scan with its truth, as :func:`look_crops` returns them."""
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.surfaces import get_surface

    surf = get_surface(surface)
    empty = bool(truth.bias_v is not None and truth.bias_v > 0 and not surf.filled_only)
    look = 2 * int(empty) + int(inverted)
    pairs = crops_at_truth(prepare(scan, surf), truth, rng, jitter_px)
    crops, classes = [c for _, c in pairs], [k for k, _ in pairs]
    x = np.stack(crops).astype(np.float32) if crops else np.zeros((0, 2, 32, 32), np.float32)
    return x, np.array(classes, dtype=str), np.full(len(classes), look, np.int64)


def make_look_set(surface: str, scans: int, seed: int, randomised: bool, per_class_look: int | None = None,
                  progress=None, pixels: int = 192) -> LookSet:
    """A :class:`LookSet` from ``scans`` scans of ``surface`` (scan ``i`` drawn with seed
    ``[seed, i]``, ``pixels`` as :func:`look_crops`), at most ``per_class_look`` crops per class and look."""
    xs, cs, ls = [], [], []
    kept: dict[tuple[str, int], int] = {}
    for i in range(scans):
        scan_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] & 0x7FFFFFFF)
        x, c, lk = look_crops(surface, scan_seed, randomised, pixels=pixels)
        for j in range(len(c)):
            key = (str(c[j]), int(lk[j]))
            if per_class_look is not None and kept.get(key, 0) >= per_class_look:
                continue
            kept[key] = kept.get(key, 0) + 1
            xs.append(x[j])
            cs.append(c[j])
            ls.append(lk[j])
        if progress is not None:
            progress(surface, i + 1, scans)
    x = np.stack(xs) if xs else np.zeros((0, 2, 32, 32), np.float32)
    out = LookSet(surface, x.astype(np.float32), np.array(cs, dtype=str), np.array(ls, dtype=np.int64))
    log.info("look crops of %s: %s", surface, out.counts())
    return out


def make_session_set(surface: str, microscopes: int, scans: int, seed: int, pixels: int = 192,
                     progress=None) -> LookSet:
    """A :class:`LookSet` that knows its sessions: ``microscopes`` domain-randomised microscopes of
    ``surface`` (microscope ``m``'s instrument drawn with ``[seed, m, 41, 7]``, a seed shape
    ``stmwatch simulate`` never uses), each imaging ``scans`` samples of ``pixels``² (scan ``j`` with
    ``[seed, m, j, 11, 7]``); every crop cut at a true defect, its session the microscope's index."""
    from stmwatch.models.sim.randomise import draw_style, randomised_scan

    xs, cs, ls, ms = [], [], [], []
    for m in range(microscopes):
        instrument = draw_style(np.random.default_rng([seed, m, 41, 7]))
        for j in range(scans):
            rng = np.random.default_rng([seed, m, j, 11, 7])
            scan, truth, _ = randomised_scan(surface, int(rng.integers(0, 2**31 - 1)), pixel_range=(pixels, pixels),
                                             instrument=instrument)
            x, c, lk = _cut(surface, scan, truth, bool(instrument.invert), rng, 1.0)
            xs.append(x)
            cs.append(c)
            ls.append(lk)
            ms.append(np.full(len(c), m, np.int64))
        if progress is not None:
            progress(surface, m + 1, microscopes)
    out = LookSet(surface, np.concatenate(xs).astype(np.float32), np.concatenate(cs).astype(str),
                  np.concatenate(ls), np.concatenate(ms))
    log.info("session crops of %s (%d microscopes): %s", surface, microscopes, out.counts())
    return out


def paired_polarity_crops(surface: str, seed: int, pixels: int = 192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(filled (n, 2, 32, 32), empty (n, 2, 32, 32), classes (n,))``: one training-style sample
    of ``surface`` (random artefacts, ``pixels``²) imaged at ``-|V|`` and ``+|V|`` (|V| 1.2-2.2 V),
    the same defects cut at the same (jittered) points in both, each crop normalised on its own:
    what :mod:`.polarity`'s maps are fitted on."""
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.sim.artefacts import Artefacts
    from stmwatch.models.sim.simulate import simulate_scan
    from stmwatch.models.surfaces import get_surface

    surf = get_surface(surface)
    bias = float(np.round(np.random.default_rng([seed, 5]).uniform(1.2, 2.2), 2))
    artefacts = Artefacts.random(np.random.default_rng([seed, 6]))
    looks = []
    for sign in (-1.0, 1.0):
        scan, truth = simulate_scan(surface, seed, pixels=(pixels, pixels), range_nm=pixels * surf.nm_per_px,
                                    artefacts=artefacts, bias_v=sign * bias, style="training")
        looks.append(crops_at_truth(prepare(scan, surf), truth, np.random.default_rng([seed, 7]), 1.0))
    filled, empty = looks
    if [k for k, _ in filled] != [k for k, _ in empty]:
        raise RuntimeError(f"{surface} seed {seed}: the two polarities' defects differ")

    def stack(pairs):
        return np.stack([c for _, c in pairs]).astype(np.float32) if pairs else np.zeros((0, 2, 32, 32), np.float32)
    return stack(filled), stack(empty), np.array([k for k, _ in filled], dtype=str)
