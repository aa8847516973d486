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


def contrast_range(image: np.ndarray, valid: np.ndarray | None = None,
                   percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """The values that :func:`to_rgb` maps to the ends of the colour map: the ``percentiles`` of
    the finite (and ``valid``) pixels; ``(0, 0)`` when there are none."""
    image = np.asarray(image, dtype=float)
    use = np.isfinite(image) if valid is None else (np.asarray(valid, bool) & np.isfinite(image))
    if not use.any():
        return 0.0, 0.0
    low, high = np.percentile(image[use], percentiles)
    return float(low), float(high)


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
    low, high = contrast_range(image, use, percentiles)
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
MAX_NUMBERED = 120  # more markers than this: no per-marker numbers (the table lists them)
MISSING_RED = (230, 40, 40)  # hatching over lines never acquired
OUTLINE = (0, 0, 0)  # the rim around every marker, so it shows on pale and dark images alike


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


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``target`` (> 0): a scale bar's length."""
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target * (1 + 1e-9))


def format_length_nm(nm: float) -> str:
    """A length in nm as a person writes it: ``5 nm``, ``500 pm``, ``2 um``."""
    if nm >= 1000:
        return f"{nm / 1000:.3g} um"
    if nm >= 1:
        return f"{nm:.3g} nm"
    return f"{nm * 1000:.3g} pm"


def format_si(value: float, unit: str) -> str:
    """``value`` with an SI prefix: ``5e-11, "A"`` → ``50 pA``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    exponent = max(-15, min(9, 3 * math.floor(math.log10(abs(value)) / 3)))
    prefix = {-15: "f", -12: "p", -9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G"}[exponent]
    return f"{value / 10 ** exponent:.3g} {prefix}{unit}"


def missing_row_ranges(frame: np.ndarray) -> list[tuple[int, int]]:
    """Runs of rows of ``frame`` (display frame) that are entirely NaN: ``[(first, last), ...]``,
    0-based, inclusive."""
    missing = np.isnan(frame).all(axis=1)
    runs, start = [], None
    for i, m in enumerate(missing):
        if m and start is None:
            start = i
        if not m and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(missing) - 1))
    return runs


def scan_description(scan: Scan) -> str:
    """The imaging conditions of ``scan`` in one line: channel, bias and set point."""
    from stmwatch.drivers.sxm import z_controller

    channel = scan.topography()
    shown = "ln|I|" if channel.unit == "A" else channel.name
    parts = [f"{shown} {channel.directions[0]}"]
    if scan.bias_v is not None:
        parts.append(f"bias {format_si(scan.bias_v, 'V')}")
    setpoint = z_controller(scan.header).get("Setpoint", "")
    try:
        value, _, unit = setpoint.partition(" ")
        parts.append(f"setpoint {format_si(float(value), unit.strip() or 'A')}")
    except ValueError:
        pass
    return "  |  ".join(parts)


def crowded(points: np.ndarray, spacing: float) -> bool:
    """True when markers at ``points`` ``(n, 2)`` screen pixels are too close for a number each:
    more than :data:`MAX_NUMBERED`, or half of them nearer than ``spacing`` to their neighbour."""
    if len(points) > MAX_NUMBERED:
        return True
    if len(points) < 2:
        return False
    distance = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return bool(np.median(distance.min(axis=1)) < spacing)


def overlay_png(scan_image: Scan | np.ndarray, defects: list[Defect], path: str | Path | None = None, *,
                labels: bool = True, scale_to: int = 768, title: str | None = None,
                colormap: str = "afmhot", notes: Sequence[str] = ()) -> bytes:
    """A PNG of a scan with every defect marked, to measure on; returns the PNG bytes, and writes
    them to ``path`` when one is given.

    ``scan_image`` is a :class:`Scan` (its topography's first frame is levelled and drawn at its
    physical aspect ratio) or a ``(rows, columns)`` array in the display frame (square pixels
    assumed; ``title`` names it). The image is scaled so its longer side is ``scale_to`` screen
    pixels and drawn at the left under a header; on its right a colour bar gives the height range
    shown (nm above the lowest shown, for a Z channel; ln|I| for a constant-height scan; the
    array's values for an array). For a Scan: a scale bar in nm at the bottom left of the image,
    and a header line with channel, bias and set point; lines never acquired (a partial scan) are
    hatched red and named in the header. Each defect (``row``/``col`` in the image's pixels) gets
    a circle of radius 1.5 × its equivalent radius ``sqrt(area_px / π)`` (at least 6 screen
    pixels) in its label's colour with a black rim (visible on pale and dark images), and, with
    ``labels``, its index in ``defects`` (the ``#`` of the ``process`` table) beside it, unless
    the markers crowd (:func:`crowded`): then colour and the legend alone name them. The header
    holds the title (name, size, defect count), the legend with each label's count, and
    ``notes`` (the scan's warnings, e.g. a double tip), wrapped, in yellow.
    Text is ASCII: Pillow's default font has no glyph for much else.
    """
    scan = scan_image if isinstance(scan_image, Scan) else None
    if scan is not None:
        image = viewing_image(scan)
        width_nm, height_nm = (r * 1e9 for r in scan.range_m)
        aspect = width_nm / height_nm if height_nm > 0 else image.shape[1] / image.shape[0]
        heading = title or f"{scan.name}  {width_nm:.4g} x {height_nm:.4g} nm  ({scan.pixels[0]} x {scan.pixels[1]} px)"
        channel = scan.topography()
        value_unit = "ln|I|" if channel.unit == "A" else "nm" if channel.unit == "m" else channel.unit
    else:
        image = np.asarray(scan_image, dtype=float)
        if image.ndim != 2:
            raise ValueError(f"overlay_png wants a (rows, columns) image, not shape {image.shape}")
        aspect = image.shape[1] / image.shape[0]
        heading = title or f"{image.shape[1]} x {image.shape[0]} px"
        width_nm, value_unit = None, ""
    rows, cols = image.shape
    counts = count_labels(defects)
    colours = label_colours(counts)
    heading += f"  |  {len(defects)} defect{'s' if len(defects) != 1 else ''}"

    width, height = display_size(aspect, scale_to)
    low, high = contrast_range(image)
    picture = Image.fromarray(to_rgb(image, colormap=colormap)).resize(
        (width, height), Image.Resampling.BICUBIC if min(width / cols, height / rows) < 3 else Image.Resampling.BILINEAR)
    sx, sy = width / cols, height / rows

    font_size = max(12, scale_to // 48)
    font = _font(font_size)
    line = font_size + 8
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    length = lambda t: measure.textlength(t, font=font)  # noqa: E731
    panel = int(max(96, 5.5 * font_size))  # the colour bar's column
    canvas_width = max(width + panel, 320)

    points = np.array([[(d.col + 0.5) * sx, (d.row + 0.5) * sy] for d in defects]).reshape(-1, 2)
    numbered = labels and not crowded(points, 2.2 * font_size)
    info: list[tuple[str, tuple[int, int, int]]] = []
    missing: list[tuple[int, int]] = []
    if scan is not None:
        info.append((scan_description(scan), TEXT))
        missing = missing_row_ranges(image)
        if missing:
            spans = ", ".join(f"{a + 1}-{b + 1}" if b > a else f"{a + 1}" for a, b in missing)
            n_missing = sum(b - a + 1 for a, b in missing)
            info.append((f"PARTIAL SCAN: rows {spans} of {rows} (from the top) not acquired: {n_missing} lines, "
                         "hatched red", MISSING_RED))
    if labels and not numbered and defects:
        info.append((f"{len(defects)} markers too dense to number: colour = class (legend); "
                     "positions in the table / JSON", TEXT))
    # the legend, wrapped onto as many lines as it needs
    legend_rows: list[list[tuple[str, int]]] = [[]] if counts else []
    x = 6
    for label, count in counts.items():
        text = f"{label} ({count})"
        step = font_size + 5 + int(length(text)) + 16
        if x + step > canvas_width and legend_rows[-1]:
            legend_rows.append([])
            x = 6
        legend_rows[-1].append((text, x))
        x += step
    info_lines = [(wrapped, colour) for text, colour in info for wrapped in _wrap(text, canvas_width - 12, length)]
    note_lines = [wrapped for note in notes
                  for wrapped in _wrap(note.encode("ascii", "replace").decode(), canvas_width - 12, length)]
    n_lines = 1 + len(info_lines) + len(legend_rows) + len(note_lines)
    header = n_lines * line + 6
    canvas = Image.new("RGB", (canvas_width, height + header), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = 4
    draw.text((6, y), heading, fill=TEXT, font=font)
    for text, colour in info_lines:
        y += line
        draw.text((6, y), text, fill=colour, font=font)
    labels_in_order = list(counts)
    k = 0
    for row in legend_rows:
        y += line
        for text, x in row:
            label = labels_in_order[k]
            k += 1
            draw.rectangle([x, y + 4, x + font_size, y + 4 + font_size], fill=colours[label], outline=OUTLINE)
            draw.text((x + font_size + 5, y + 2), text, fill=TEXT, font=font)
    for text in note_lines:
        y += line
        draw.text((6, y), text, fill=NOTE, font=font)

    # lines never acquired: red hatching over them (drawn on the picture, so it stays inside it)
    hatch = ImageDraw.Draw(picture)
    for a, b in missing:
        top, bottom = a * sy, (b + 1) * sy
        step = max(8, font_size)
        for x0 in range(-int(bottom - top), width, step):
            hatch.line([(x0, bottom), (x0 + (bottom - top), top)], fill=MISSING_RED, width=1)
        hatch.rectangle([0, top, width - 1, bottom - 1], outline=MISSING_RED, width=2)
    canvas.paste(picture, (0, header))

    _colour_bar(draw, canvas, font, font_size, (width + 10, header), height, low, high, value_unit, colormap)
    if width_nm:
        _scale_bar(draw, font, font_size, (0, header, width, height), width_nm)

    ring = max(2, scale_to // 384)
    for index, defect in enumerate(defects):
        cx, cy = points[index, 0], points[index, 1] + header
        radius = max(6.0, 1.5 * math.sqrt(max(defect.area_px, 0.0) / math.pi) * math.sqrt(sx * sy))
        colour = colours[defect.label]
        draw.ellipse([cx - radius - 1, cy - radius - 1, cx + radius + 1, cy + radius + 1], outline=OUTLINE,
                     width=ring + 2)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=colour, width=ring)
        if numbered:
            text = str(index)
            text_x = cx + radius + 3
            text_width = draw.textlength(text, font=font)
            if text_x + text_width > width:  # no room on the right: put it on the left
                text_x = cx - radius - 3 - text_width
            draw.text((text_x, cy - font_size / 2), text, fill=colour, font=font,
                      stroke_width=2, stroke_fill=OUTLINE)
    return _png_bytes(canvas, path)


def _colour_bar(draw: ImageDraw.ImageDraw, canvas: Image.Image, font, font_size: int, origin: tuple[int, int],
                height: int, low: float, high: float, unit: str, colormap: str) -> None:
    """The colour map from ``low`` (bottom) to ``high`` (top), labelled: for nm and ln|I| (levelled
    images) the range above the lowest shown (0 at the bottom), else the values themselves."""
    left, top = origin
    bar_top, bar_bottom = top + font_size + 10, top + height - font_size - 10
    if bar_bottom - bar_top < 20:
        return
    t = np.linspace(1.0, 0.0, bar_bottom - bar_top)[:, None] * np.ones((1, 16))
    gradient = np.round(COLORMAPS[colormap](t) * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(gradient), (left, bar_top))
    draw.rectangle([left - 1, bar_top - 1, left + 16, bar_bottom], outline=TEXT)
    if unit == "nm":
        top_text, bottom_text, title = format_length_nm(high - low), "0", "height"
    elif unit == "ln|I|":  # levelled: only differences mean something
        top_text, bottom_text, title = f"+{high - low:.3g}", "0", unit
    else:
        top_text, bottom_text, title = f"{high:.3g}", f"{low:.3g}", unit or "value"
    draw.text((left - 4, top + 2), title, fill=TEXT, font=font)
    draw.text((left + 20, bar_top - 2), top_text, fill=TEXT, font=font)
    draw.text((left + 20, bar_bottom - font_size), bottom_text, fill=TEXT, font=font)


def _scale_bar(draw: ImageDraw.ImageDraw, font, font_size: int, box: tuple[int, int, int, int], width_nm: float) -> None:
    """A bar of a round length (about a fifth of the width) at the bottom left of the image."""
    left, top, width, height = box
    length_nm = nice_length(width_nm / 5)
    bar = length_nm / width_nm * width
    text = format_length_nm(length_nm)
    text_width = draw.textlength(text, font=font)
    margin, thick = 10, max(4, font_size // 3)
    x0, y1 = left + margin, top + height - margin
    draw.rectangle([x0 - 6, y1 - thick - font_size - 12, x0 + max(bar, text_width) + 6, y1 + 6], fill=(0, 0, 0))
    draw.rectangle([x0, y1 - thick, x0 + bar, y1], fill=(255, 255, 255))
    draw.text((x0 + (bar - text_width) / 2, y1 - thick - font_size - 6), text, fill=(255, 255, 255), font=font)


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
