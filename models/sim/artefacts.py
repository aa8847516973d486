"""Tip and scanner artefacts for the STM simulator, in acquisition order.

Heights are **nanometres**, positions **nanometres** in the scanner frame, arrays ``(rows,
columns)`` in the display frame (``shared/docs/conventions.md``). An STM acquires a frame line by
line: for a ``down`` scan the first line is display row 0, for ``up`` it is the last row; each
line is traced forward (left to right in the display frame) and then backward (right to left).
:class:`AcquisitionOrder` maps every display pixel of both frames to its place in that order, so that
artefacts that depend on time -- drift, creep, line offsets, 1/f noise, tip changes, an aborted
scan -- act on lines as they were acquired.

Each artefact has its own level in :class:`Artefacts` (0 = off, 1 = typical) and draws its own
random numbers from a generator keyed by the scan's seed and the artefact's name, so switching
one artefact on or off never changes the others or the surface.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

ARTEFACTS = ("tilt", "line_offsets", "noise_1f", "white_noise", "scars", "tip_change", "double_tip",
             "drift", "creep", "hysteresis", "aborted")


@dataclasses.dataclass(frozen=True)
class Artefacts:
    """One level per artefact: 0 switches it off, 1 is a typical laboratory level (its random
    parameters are drawn around that level), 2 twice as strong.

    - ``tilt``: sample tilt, a plane of a few percent slope.
    - ``line_offsets``: every acquired line shifted in height (a random walk with jumps).
    - ``noise_1f``: 1/f noise along the acquisition time; ``white_noise``: per-pixel noise.
    - ``scars``: short streaks where the feedback lost the surface.
    - ``tip_change``: the tip changes at one line: sharper or blunter, a height jump, a new gain.
    - ``double_tip``: a second tip apex images every feature again, shifted.
    - ``drift``: the sample moves steadily under the tip (thermal drift).
    - ``creep``: the piezo creeps after an offset change: an exponential shift early in the frame.
    - ``hysteresis``: the backward trace is shifted along the line against the forward one.
    - ``aborted``: the scan stops early; the lines never acquired are NaN.
    """

    tilt: float = 0.0
    line_offsets: float = 0.0
    noise_1f: float = 0.0
    white_noise: float = 0.0
    scars: float = 0.0
    tip_change: float = 0.0
    double_tip: float = 0.0
    drift: float = 0.0
    creep: float = 0.0
    hysteresis: float = 0.0
    aborted: float = 0.0

    @classmethod
    def none(cls) -> Artefacts:
        return cls()

    @classmethod
    def all(cls, level: float = 1.0) -> Artefacts:
        """Every artefact on at ``level`` (their parameters are still drawn at random per scan)."""
        return cls(**{name: level for name in ARTEFACTS})

    @classmethod
    def only(cls, *names: str, level: float = 1.0) -> Artefacts:
        unknown = set(names) - set(ARTEFACTS)
        if unknown:
            raise ValueError(f"unknown artefacts {sorted(unknown)}; known: {', '.join(ARTEFACTS)}")
        return cls(**{name: level for name in names})

    @classmethod
    def parse(cls, text: str) -> Artefacts:
        """``"none"``, ``"all"``, or a comma list such as ``"tilt,drift=2"`` (name or name=level)."""
        text = text.strip().lower()
        if text in ("", "none"):
            return cls.none()
        if text == "all":
            return cls.all()
        levels = {}
        for part in text.split(","):
            name, _, level = part.strip().partition("=")
            if name not in ARTEFACTS:
                raise ValueError(f"unknown artefact {name!r}; known: {', '.join(ARTEFACTS)}")
            levels[name] = float(level) if level else 1.0
        return cls(**levels)

    @classmethod
    def random(cls, rng: np.random.Generator) -> Artefacts:
        """A realistic mix for training data: common artefacts often, rare ones seldom."""
        chance = {"tilt": 0.9, "line_offsets": 0.8, "noise_1f": 0.7, "white_noise": 0.9, "scars": 0.3,
                  "tip_change": 0.15, "double_tip": 0.1, "drift": 0.5, "creep": 0.2, "hysteresis": 0.5,
                  "aborted": 0.05}
        return cls(**{name: float(rng.uniform(0.3, 1.5)) if rng.random() < p else 0.0
                      for name, p in chance.items()})

    def on(self) -> list[str]:
        """Names of the artefacts switched on."""
        return [name for name in ARTEFACTS if getattr(self, name) > 0]


def artefact_rng(seed: int, name: str) -> np.random.Generator:
    """The random generator of one artefact in the scan of ``seed``."""
    return np.random.default_rng([seed, 1000 + ARTEFACTS.index(name)])


# ---- acquisition order -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AcquisitionOrder:
    """Where each display pixel of the forward and backward frames falls in acquisition order."""

    rows: int
    cols: int
    direction: str  # "down": display row 0 acquired first; "up": the last row first

    def line(self) -> np.ndarray:
        """``(rows,)``: acquisition line number of each display row."""
        r = np.arange(self.rows)
        return r if self.direction == "down" else self.rows - 1 - r

    def sample_index(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` integer sample numbers of the forward and backward frames: line L is
        traced forward (left to right) as samples ``2L*cols ...`` then backward (right to left)."""
        line = self.line()[:, None]
        c = np.arange(self.cols)[None, :]
        return 2 * line * self.cols + c, (2 * line + 1) * self.cols + (self.cols - 1 - c)

    def times(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` acquisition times of both frames, in frames (0 = start, 1 = end)."""
        k_fwd, k_bwd = self.sample_index()
        total = 2 * self.rows * self.cols
        return (k_fwd + 0.5) / total, (k_bwd + 0.5) / total

    def rows_after(self, line: int) -> np.ndarray:
        """``(rows,)`` bool: display rows acquired at or after acquisition line ``line``."""
        return self.line() >= line


# ---- motion of the sample under the tip (drift, creep) and hysteresis ---------------------------


T_RANGE = (-1.0, 2.0)  # frames: times where Motion.shift follows its formula (constant outside)


@dataclasses.dataclass(frozen=True)
class Motion:
    """Displacement (nm) of the sample against the scanner at time ``t`` (frames): steady drift
    with a little acceleration, plus piezo creep ``A (1 - exp(-t / tau))``. Zero at ``t = 0``.

    The formula is followed from one frame before the acquisition to one frame after it
    (:data:`T_RANGE`) and held constant beyond: the fixed-point search for where a defect is seen
    (``simulate._truth``) may try times far outside the frame for defects near its edges, and the
    creep's exponential, extrapolated backwards, would overflow there (then NaN positions)."""

    velocity: tuple[float, float] = (0.0, 0.0)  # nm per frame
    acceleration: tuple[float, float] = (0.0, 0.0)  # nm per frame^2
    creep: tuple[float, float] = (0.0, 0.0)  # nm
    tau: float = 0.1  # frames

    def shift(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.clip(np.asarray(t, float), *T_RANGE)
        creep = 1.0 - np.exp(-t / self.tau)
        return tuple(self.velocity[i] * t + 0.5 * self.acceleration[i] * t ** 2 + self.creep[i] * creep
                     for i in range(2))


def draw_motion(artefacts: Artefacts, seed: int, frame_nm: float) -> Motion:
    """Drift and creep for a frame ``frame_nm`` wide (both scale with the frame size)."""
    velocity = acceleration = creep = (0.0, 0.0)
    tau = 0.1
    if artefacts.drift > 0:
        rng = artefact_rng(seed, "drift")
        speed = min(artefacts.drift * rng.uniform(0.02, 0.07), 0.5) * frame_nm  # nm per frame
        a = rng.uniform(0, 2 * math.pi)
        velocity = (speed * math.cos(a), speed * math.sin(a))
        acceleration = tuple(rng.normal(0, 0.3 * speed, 2))
    if artefacts.creep > 0:
        rng = artefact_rng(seed, "creep")
        fraction = artefacts.creep * rng.uniform(0.02, 0.06)  # of the frame size
        # The creep's initial speed fraction / tau stays below 0.8 frames per frame: the image is
        # compressed or stretched near its start but never folds over itself.
        tau = float(max(rng.uniform(0.05, 0.2), fraction / 0.8))
        a = rng.uniform(0, 2 * math.pi)
        creep = (fraction * frame_nm * math.cos(a), fraction * frame_nm * math.sin(a))
    return Motion(velocity, acceleration, creep, tau)


def hysteresis_shift(artefacts: Artefacts, seed: int, cols: int, pixel_nm: float) -> np.ndarray:
    """``(cols,)`` shift (nm) along the fast-scan direction of the backward trace against the
    forward one: a constant lag plus a larger lag where the backward line starts (right edge)."""
    if artefacts.hysteresis <= 0:
        return np.zeros(cols)
    rng = artefact_rng(seed, "hysteresis")
    lag = rng.uniform(0.5, 2.0) * pixel_nm + rng.uniform(0.05, 0.2)
    start = rng.uniform(1.0, 4.0) * pixel_nm
    c = np.arange(cols) / max(cols - 1, 1)
    return artefacts.hysteresis * (lag + start * np.exp(-(1 - c) / 0.08))


# ---- the tip -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tip:
    """The tip as the renderer sees it: Gaussian blur (nm), an optional second apex offset by
    ``double`` (nm, scanner frame) that sits ``drop`` nm further from the surface, a gain on the
    corrugation and a height jump (nm)."""

    blur: float = 0.05
    double: tuple[float, float] | None = None
    drop: float = 0.0
    gain: float = 1.0
    jump: float = 0.0


def draw_double(artefacts: Artefacts, rng: np.random.Generator) -> tuple[tuple[float, float], float]:
    dist = artefacts.double_tip * rng.uniform(0.6, 2.0)
    a = rng.uniform(0, 2 * math.pi)
    return (dist * math.cos(a), dist * math.sin(a)), float(rng.uniform(0.0, 0.04))


def draw_tip_change(artefacts: Artefacts, seed: int, rows: int, tip: Tip) -> tuple[int, Tip]:
    """The acquisition line where the tip changes and the tip after it."""
    rng = artefact_rng(seed, "tip_change")
    line = int(rng.integers(int(0.15 * rows), max(int(0.85 * rows), int(0.15 * rows) + 1)))
    level = artefacts.tip_change
    blur = tip.blur * rng.uniform(0.5, 1.0) if rng.random() < 0.3 else tip.blur + level * rng.uniform(0.05, 0.2)
    double = tip.double
    drop = tip.drop
    if rng.random() < 0.3:
        double, drop = draw_double(Artefacts(double_tip=level), rng)
    gain = float(np.clip(1 + level * rng.normal(0, 0.25), 0.3, 2.0))
    jump = float(level * rng.choice([-1, 1]) * rng.uniform(0.05, 0.3))
    return line, Tip(blur, double, drop, gain, jump)


def combine_double(z_main: np.ndarray, z_second: np.ndarray, drop: float, softness: float = 0.01) -> np.ndarray:
    """Height seen by two apexes: the one nearer the surface dominates (a soft maximum, nm)."""
    return softness * np.logaddexp(z_main / softness, (z_second - drop) / softness)


# ---- height artefacts added after rendering (nm) ------------------------------------------------


def add_tilt(z: list[np.ndarray], x: list[np.ndarray], y: list[np.ndarray], level: float, seed: int) -> None:
    """A plane of slope ``level`` x 0.5-4 % in a random direction, in scanner coordinates (in place)."""
    rng = artefact_rng(seed, "tilt")
    slope = level * rng.uniform(0.005, 0.04)
    a = rng.uniform(0, 2 * math.pi)
    gx, gy = slope * math.cos(a), slope * math.sin(a)
    x0, y0 = float(np.mean(x[0])), float(np.mean(y[0]))
    for zi, xi, yi in zip(z, x, y):
        zi += gx * (xi - x0) + gy * (yi - y0)


def line_offsets(level: float, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``(rows,)`` height offsets (nm) of the acquisition lines: a random walk with a few jumps."""
    walk = np.cumsum(rng.normal(0, 0.002, rows))
    jumps = np.cumsum(np.where(rng.random(rows) < 3.0 / rows, rng.normal(0, 0.03, rows), 0.0))
    white = rng.normal(0, 0.005, rows)
    return level * (walk + jumps + white)


def power_law_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of 1/f^``exponent`` noise, zero mean, unit standard deviation."""
    spectrum = np.fft.rfft(rng.normal(size=n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)  # numpy computes f ** 0.5 as np.sqrt(f)
    noise -= noise.mean()
    return noise / (noise.std() + 1e-12)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of 1/f noise (power spectrum ~ 1/f), zero mean, unit standard deviation."""
    return power_law_noise(n, 1.0, rng)


def add_scars(frames: list[np.ndarray], count: int, amplitude: float, rng: np.random.Generator) -> None:
    """``count`` streaks (in place): for a run of pixels along a line the feedback lost the surface
    and the height sat ``amplitude`` x 0.2-1 above or below the line's median."""
    rows, cols = frames[0].shape
    for _ in range(count):
        frame = frames[int(rng.integers(len(frames)))]
        r = int(rng.integers(rows))
        length = int(rng.integers(max(3, cols // 40), max(4, cols // 4)))
        start = int(rng.integers(0, max(cols - length, 1)))
        level = np.nanmedian(frame[r]) if np.isfinite(frame[r]).any() else 0.0
        jump = rng.choice([-1, 1]) * amplitude * rng.uniform(0.2, 1.0)
        seg = frame[r, start:start + length]
        seg[...] = level + jump + rng.normal(0, 0.05 * amplitude, seg.shape)


# ---- extra noise on preprocessed model input (training augmentation) ----------------------------

NOISE_KINDS = ("line_offsets", "scars", "tip_change", "noise_1f", "white_noise")


def _box_blur_rows(image: np.ndarray) -> np.ndarray:
    """Three-tap blur along both axes of a ``(H, W)`` array (edges repeated)."""
    p = np.pad(image, 1, mode="edge")
    rows = (p[:-2, 1:-1] + p[1:-1, 1:-1] + p[2:, 1:-1]) / 3
    p = np.pad(rows, 1, mode="edge")
    return (p[1:-1, :-2] + p[1:-1, 1:-1] + p[1:-1, 2:]) / 3


def apply_noise(image: np.ndarray, rng: np.random.Generator, kinds=NOISE_KINDS, strength: float = 1.0) -> np.ndarray:
    """Extra experimental noise on a preprocessed ``(C, H, W)`` float32 image (median 0, robust
    spread 1; channel 0 forward, 1 backward, rows acquired top to bottom). Returns a new array.

    ``kinds`` is any subset of :data:`NOISE_KINDS`; ``strength`` scales every kind (1 = typical).
    Lines share their offsets, tip changes and 1/f noise between channels (they are the same lines
    traced both ways); scars and white noise are independent per channel.
    """
    unknown = set(kinds) - set(NOISE_KINDS)
    if unknown:
        raise ValueError(f"unknown noise kinds {sorted(unknown)}; known: {', '.join(NOISE_KINDS)}")
    out = np.array(image, dtype=np.float32, copy=True)
    channels, h, w = out.shape
    if "tip_change" in kinds:
        row = int(rng.integers(1, h))
        gain = float(np.clip(rng.normal(1, 0.25 * strength), 0.3, 2.0))
        jump = float(rng.normal(0, 0.8 * strength))
        blunt = rng.random() < 0.5
        for c in range(channels):
            lower = out[c, row:]
            if blunt:
                lower = _box_blur_rows(lower)
            out[c, row:] = lower * gain + jump
    if "line_offsets" in kinds:
        offsets = line_offsets(strength * 5.0, h, rng)  # a few tenths of a spread per line
        out += offsets[None, :, None].astype(np.float32)
    if "noise_1f" in kinds:
        seq = pink_noise(channels * h * w, rng) * 0.15 * strength
        # channel 0 traced left to right, channel 1 right to left, line after line
        seq = seq.reshape(h, channels, w)
        for c in range(channels):
            out[c] += seq[:, c, ::-1] if c % 2 else seq[:, c, :]
    if "white_noise" in kinds:
        out += rng.normal(0, 0.1 * strength, out.shape).astype(np.float32)
    if "scars" in kinds:
        add_scars([out[c] for c in range(channels)], int(rng.poisson(2 * strength)) + 1, 5.0 * strength, rng)
    return out
