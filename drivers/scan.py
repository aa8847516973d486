"""The one data class that carries a scan from a driver to every sink.

Array orientation (see ``shared/docs/conventions.md``): every frame in a :class:`Scan` is in the
*display frame* -- row 0 at the top of the image as the operator sees it, column 0 at the left,
backward frames already mirrored so that their columns run left to right. Arrays are float32 of
shape ``(rows, columns)``; lines that were never acquired (an aborted scan) are NaN.

Physical coordinates are metres in the *scanner frame* (x right, y up), honouring the frame's
offset (its centre) and angle (degrees, positive = clockwise, as Nanonis ``Scan.FrameSet``).
:meth:`Scan.pixel_to_scanner` and :meth:`Scan.scanner_to_pixel` are the only place where the two
are converted; everything else in stmwatch calls them.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path

import numpy as np

DIRECTIONS = ("up", "down")


@dataclasses.dataclass
class Channel:
    """One recorded signal: a forward and/or a backward frame in the display frame.

    ``forward``/``backward`` are float32 ``(rows, columns)`` arrays, or ``None`` when the channel
    was recorded in one direction only. ``unit`` is the SI unit of the values (``"m"`` for Z).
    """

    name: str
    unit: str
    forward: np.ndarray | None = None
    backward: np.ndarray | None = None
    calibration: str = "1.000E+0"
    offset: str = "0.000E+0"
    index: int = 0

    @property
    def directions(self) -> list[str]:
        """The directions present, in file order (``forward`` before ``backward``)."""
        return [d for d in ("forward", "backward") if getattr(self, d) is not None]

    def frames(self) -> list[np.ndarray]:
        return [getattr(self, d) for d in self.directions]


def _is_flat(channel: Channel) -> bool:
    """True when every acquired value of every frame of ``channel`` is the same."""
    lows, highs = [], []
    for frame in channel.frames():  # fmin/fmax skip NaN (NaN: no finite value) and copy nothing
        lo, hi = (np.fmin.reduce(frame, axis=None), np.fmax.reduce(frame, axis=None)) if frame.size else (0.0, np.nan)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # no value, or an infinity: the finite values alone
            finite = frame[np.isfinite(frame)]
            if not finite.size:
                continue
            lo, hi = finite.min(), finite.max()
        lows.append(lo)
        highs.append(hi)
    return not lows or bool(min(lows) == max(highs))


@dataclasses.dataclass
class Scan:
    """A scan's channels and geometry.

    ``pixels`` is ``(columns, rows)`` as Nanonis ``SCAN_PIXELS``; ``range_m`` ``(width, height)``
    and ``offset_m`` ``(x, y)`` of the frame centre are metres; ``angle_deg`` is degrees clockwise;
    ``direction`` is ``"up"`` (first line acquired at the bottom) or ``"down"``.
    """

    channels: list[Channel]
    pixels: tuple[int, int]
    range_m: tuple[float, float]
    offset_m: tuple[float, float] = (0.0, 0.0)
    angle_deg: float = 0.0
    direction: str = "down"
    bias_v: float | None = None
    acquired: dt.datetime | None = None
    source: Path | None = None
    header: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'up' or 'down', not {self.direction!r}")
        if not all(math.isfinite(r) and r > 0 for r in self.range_m):  # every position divides by it
            raise ValueError(f"range_m {tuple(self.range_m)} m is not a positive width and height")
        nx, ny = self.pixels
        for ch in self.channels:
            for frame in ch.frames():
                if frame.shape != (ny, nx):
                    raise ValueError(
                        f"channel {ch.name}: frame shape {frame.shape} is not (rows, columns) = {(ny, nx)}"
                    )

    # ---- channels ---------------------------------------------------------------------------
    def channel(self, name: str) -> Channel:
        """The channel called ``name`` (case-insensitive), or KeyError listing what there is."""
        for ch in self.channels:
            if ch.name.lower() == name.lower():
                return ch
        raise KeyError(f"no channel {name!r}; channels are {[c.name for c in self.channels]}")

    def topography(self) -> Channel:
        """The channel that carries the surface's image: Z in a constant-current scan; Current
        when Z did not move (a constant-height scan, feedback off); else the first channel."""
        names = [c.name.lower() for c in self.channels]
        if "z" in names:
            z = self.channels[names.index("z")]
            if "current" not in names or not _is_flat(z):
                return z
            return self.channels[names.index("current")]
        return self.channels[0]

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of every frame."""
        return (self.pixels[1], self.pixels[0])

    @property
    def nan_rows(self) -> int:
        """Lines not acquired (all NaN): the most of any frame of any channel."""
        return max(int(np.isnan(f).all(axis=1).sum()) for c in self.channels for f in c.frames())

    @property
    def partial(self) -> bool:
        """True when some lines were never acquired (an aborted or still-running scan)."""
        return self.nan_rows > 0

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        """``(x, y)`` size of one pixel in metres."""
        return (self.range_m[0] / self.pixels[0], self.range_m[1] / self.pixels[1])

    @property
    def name(self) -> str:
        return self.source.name if self.source else "<memory>"

    # ---- coordinates --------------------------------------------------------------------------
    def pixel_to_scanner(self, row, col) -> tuple[np.ndarray, np.ndarray]:
        """Display-frame pixel indices (may be fractional) → scanner-frame metres ``(x, y)``.

        Integer ``(row, col)`` is the centre of that pixel. Works on scalars or arrays.
        """
        nx, ny = self.pixels
        width, height = self.range_m
        u = ((np.asarray(col, dtype=float) + 0.5) / nx - 0.5) * width
        v = (0.5 - (np.asarray(row, dtype=float) + 0.5) / ny) * height
        theta = math.radians(self.angle_deg)
        c, s = math.cos(theta), math.sin(theta)
        x = self.offset_m[0] + u * c + v * s
        y = self.offset_m[1] - u * s + v * c
        return x, y

    def scanner_to_pixel(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Scanner-frame metres ``(x, y)`` → display-frame pixel indices ``(row, col)``."""
        nx, ny = self.pixels
        width, height = self.range_m
        dx = np.asarray(x, dtype=float) - self.offset_m[0]
        dy = np.asarray(y, dtype=float) - self.offset_m[1]
        theta = math.radians(self.angle_deg)
        c, s = math.cos(theta), math.sin(theta)
        u = dx * c - dy * s
        v = dx * s + dy * c
        col = (u / width + 0.5) * nx - 0.5
        row = (0.5 - v / height) * ny - 0.5
        return row, col

    def to_xarray(self, defects=(), warnings=()):
        """This scan as an ``xarray.Dataset`` (coordinates in metres; ``defects``, e.g. an
        analysis's, as a table along dim ``defect``); needs the ``[xarray]`` extra. See
        :mod:`stmwatch.drivers.dataset`."""
        from .dataset import scan_dataset

        return scan_dataset(self, defects, warnings)

    def geometry(self) -> dict:
        """The geometry as plain JSON-able values (used by ``info``, ``process`` and overlays)."""
        return {
            "pixels": list(self.pixels),
            "range_m": list(self.range_m),
            "offset_m": list(self.offset_m),
            "angle_deg": self.angle_deg,
            "direction": self.direction,
        }
