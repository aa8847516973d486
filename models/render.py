"""PNG images for people: a scan with its defects outlined, and contact sheets.

Images are ``(rows, columns)`` arrays in the display frame (row 0 at the top, as drawn). Colours
come from small numpy colour maps (no matplotlib); PNGs are written with Pillow.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stmwatch.drivers.scan import Scan

from .defects import Defect, count_labels
from .preprocess import align_rows, apparent_height, fill_nan_rows, level_plane

INVALID_GREY = (128, 128, 128)
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
NOTE = (250, 200, 60)  # warnings: yellow
# Outline colours (see label_colours); chosen to stand out on afmhot/gold,
# which run black → red → orange → yellow → white.
LABEL_COLOURS = [
    (0, 230, 255),  # cyan
    (60, 255, 60),  # green
    (255, 60, 255),  # magenta
    (90, 120, 255),  # blue
    (170, 255, 200),  # mint
    (200, 130, 255),  # violet
    (0, 150, 130),  # teal
    (255, 255, 255),  # white
]


# ---- colour maps -----------------------------------------------------------------------------
def _colormap_afmhot(t: np.ndarray) -> np.ndarray:
    """matplotlib's ``afmhot``: black → red → orange → yellow → white."""
    return np.stack([np.clip(2 * t, 0, 1), np.clip(2 * t - 0.5, 0, 1), np.clip(2 * t - 1, 0, 1)], axis=-1)


def _colormap_gold(t: np.ndarray) -> np.ndarray:
    """A Gwyddion-like gold: black → brown → gold → pale yellow."""
    return np.stack([np.clip(1.6 * t, 0, 1), np.clip(1.25 * t - 0.1, 0, 1) ** 1.1,
                     np.clip(1.6 * t - 0.6, 0, 1)], axis=-1)


def _colormap_gray(t: np.ndarray) -> np.ndarray:
    return np.stack([t, t, t], axis=-1)


COLORMAPS = {"afmhot": _colormap_afmhot, "gold": _colormap_gold, "gray": _colormap_gray}


def to_rgb(image: np.ndarray, valid: np.ndarray | None = None, colormap: str = "afmhot",
           percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """A 2-D ``(rows, columns)`` array → ``(rows, columns, 3)`` uint8 RGB.

    Contrast runs from the ``percentiles`` of the valid pixels (so a few spikes do not wash the
    image out); pixels that are NaN/inf or False in ``valid`` are grey. A constant image maps to
    the middle of the colour map. ``colormap`` is one of :data:`COLORMAPS`.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, not {colormap!r}")
    image = np.asarray(image, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"to_rgb wants a (rows, columns) array, not shape {image.shape}")
    use = np.isfinite(image) if valid is None else (np.asarray(valid, bool) & np.isfinite(image))
    t = np.full(image.shape, 0.5)
    if use.any():
        low, high = np.percentile(image[use], percentiles)
        if high > low:
            t = np.clip((np.where(use, image, low) - low) / (high - low), 0.0, 1.0)
    rgb = np.round(COLORMAPS[colormap](t) * 255).astype(np.uint8)
    rgb[~use] = INVALID_GREY
    return rgb


# ---- text and layout helpers -----------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _png_bytes(picture: Image.Image, path: str | Path | None) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def label_colours(labels) -> dict[str, tuple[int, int, int]]:
    """A colour for each distinct label, the same in every picture: a surface's own classes take
    the first four colours of :data:`LABEL_COLOURS` in the order of ``Surface.classes``,
    ``unknown`` is white, and any other label (``defect``, a class an operator added) takes the
    remaining colours in sorted order."""
    from .surfaces import SURFACES

    labels = set(labels)
    fixed = {cls: LABEL_COLOURS[i] for surface in SURFACES.values() for i, cls in enumerate(surface.classes)}
    fixed["unknown"] = LABEL_COLOURS[-1]
    spare = LABEL_COLOURS[4:-1]
    others = sorted(labels - set(fixed))
    return {label: fixed[label] if label in fixed else spare[others.index(label) % len(spare)] for label in labels}


def display_size(aspect: float, longest: int) -> tuple[int, int]:
    """``(width, height)`` in screen pixels of an image whose width/height is ``aspect``, with
    the longer side ``longest`` screen pixels."""
    if aspect >= 1:
        return longest, max(1, round(longest / aspect))
    return max(1, round(longest * aspect)), longest


def viewing_image(scan: Scan) -> np.ndarray:
    """The topography's first frame as an apparent height, levelled for viewing: NaN kept, plane
    and row offsets removed. ``(rows, columns)`` float, display frame."""
    channel = scan.topography()
    frame = apparent_height(channel.frames()[0], channel.unit)
    filled, valid = fill_nan_rows(frame)
    levelled = align_rows(level_plane(filled, valid), "median", valid)
    levelled[~valid] = np.nan
    return levelled


# ---- overlay ---------------------------------------------------------------------------------
def _wrap(text: str, width: float, length: Callable[[str], float]) -> list[str]:
    """``text`` broken at spaces into lines no longer than ``width`` by ``length`` (a word longer
    than that gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and length(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def overlay_png(scan_image: Scan | np.ndarray, defects: list[Defect], path: str | Path | None = None, *,
                labels: bool = True, scale_to: int = 768, title: str | None = None,
                colormap: str = "afmhot", notes: Sequence[str] = ()) -> bytes:
    """A PNG of a scan with every defect outlined; returns the PNG bytes, and writes them to
    ``path`` when one is given.

    ``scan_image`` is a :class:`Scan` (its topography's first frame is levelled and drawn at its
    physical aspect ratio; the title gives file name and size in nm) or a ``(rows, columns)``
    array in the display frame (square pixels assumed; ``title`` names it). The image is scaled
    so its longer side is ``scale_to`` screen pixels. Each defect (``row``/``col`` in the image's
    pixels) gets a circle of radius 1.5 × its equivalent radius ``sqrt(area_px / π)`` (at least
    6 screen pixels) in its label's colour, and, with ``labels``, the label beside it. Above the
    image: a title line (name, size, defect count), a legend with the count of each label and
    ``notes`` (the scan's warnings, e.g. a double tip), wrapped to the width, in yellow.
    Text is ASCII: Pillow's default font has no glyph for much else.
    """
    if isinstance(scan_image, Scan):
        scan = scan_image
        image = viewing_image(scan)
        width_nm, height_nm = (r * 1e9 for r in scan.range_m)
        aspect = width_nm / height_nm if height_nm > 0 else image.shape[1] / image.shape[0]
        heading = title or f"{scan.name}  {width_nm:.4g} x {height_nm:.4g} nm  ({scan.pixels[0]} x {scan.pixels[1]} px)"
    else:
        image = np.asarray(scan_image, dtype=float)
        if image.ndim != 2:
            raise ValueError(f"overlay_png wants a (rows, columns) image, not shape {image.shape}")
        aspect = image.shape[1] / image.shape[0]
        heading = title or f"{image.shape[1]} x {image.shape[0]} px"
    rows, cols = image.shape
    counts = count_labels(defects)
    colours = label_colours(counts)
    heading += f"  |  {len(defects)} defect{'s' if len(defects) != 1 else ''}"

    width, height = display_size(aspect, scale_to)
    picture = Image.fromarray(to_rgb(image, colormap=colormap)).resize(
        (width, height), Image.Resampling.BICUBIC if min(width / cols, height / rows) < 3 else Image.Resampling.BILINEAR)

    font_size = max(12, scale_to // 48)
    font = _font(font_size)
    line = font_size + 8
    canvas_width = max(width, 320)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    note_lines = [wrapped for note in notes
                  for wrapped in _wrap(note.encode("ascii", "replace").decode(), canvas_width - 12,
                                       lambda t: measure.textlength(t, font=font))]
    header = (2 + len(note_lines)) * line + 6
    canvas = Image.new("RGB", (canvas_width, height + header), BACKGROUND)
    canvas.paste(picture, (0, header))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), heading, fill=TEXT, font=font)
    for k, text in enumerate(note_lines):
        draw.text((6, (2 + k) * line + 4), text, fill=NOTE, font=font)
    x = 6
    for label, count in counts.items():
        draw.rectangle([x, line + 8, x + font_size, line + 8 + font_size], fill=colours[label])
        text = f"{label} ({count})"
        draw.text((x + font_size + 5, line + 6), text, fill=TEXT, font=font)
        x += font_size + 5 + int(draw.textlength(text, font=font)) + 16

    sx, sy = width / cols, height / rows
    for defect in defects:
        cx = (defect.col + 0.5) * sx
        cy = (defect.row + 0.5) * sy + header
        radius = max(6.0, 1.5 * math.sqrt(max(defect.area_px, 0.0) / math.pi) * math.sqrt(sx * sy))
        colour = colours[defect.label]
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=colour,
                     width=max(2, scale_to // 384))
        if labels:
            text_x = cx + radius + 3
            text_width = draw.textlength(defect.label, font=font)
            if text_x + text_width > canvas.width:  # no room on the right: put it on the left
                text_x = cx - radius - 3 - text_width
            draw.text((text_x, cy - font_size / 2), defect.label, fill=colour, font=font,
                      stroke_width=2, stroke_fill=(0, 0, 0))
    return _png_bytes(canvas, path)


# ---- contact sheet ---------------------------------------------------------------------------
def grid_png(images: list[np.ndarray], titles: list[str] | None = None, path: str | Path | None = None, *,
             tile: int = 256, columns: int | None = None, colormap: str = "afmhot") -> bytes:
    """A contact sheet: each ``(rows, columns)`` image scaled to fit a ``tile`` × ``tile`` square
    (aspect kept), its title above it, ``columns`` per row (default: about square). Returns the
    PNG bytes and writes them to ``path`` when one is given."""
    if not images:
        raise ValueError("grid_png needs at least one image")
    titles = list(titles) if titles is not None else [""] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    columns = columns or math.ceil(math.sqrt(len(images)))
    grid_rows = math.ceil(len(images) / columns)
    font_size = max(10, tile // 20)
    font = _font(font_size)
    caption = font_size + 8
    gap = 6
    sheet = Image.new("RGB", (columns * (tile + gap) + gap, grid_rows * (tile + caption + gap) + gap), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (image, name) in enumerate(zip(images, titles)):
        image = np.asarray(image, dtype=float)
        if image.ndim == 3:  # (channels, rows, columns): show the first channel
            image = image[0]
        width, height = display_size(image.shape[1] / image.shape[0], tile)
        picture = Image.fromarray(to_rgb(image, colormap=colormap)).resize((width, height), Image.Resampling.BILINEAR)
        left = gap + (i % columns) * (tile + gap)
        top = gap + (i // columns) * (tile + caption + gap)
        draw.text((left, top + 2), str(name), fill=TEXT, font=font)
        sheet.paste(picture, (left, top + caption))
    return _png_bytes(sheet, path)
