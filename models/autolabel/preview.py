"""The preview PNG of one auto-labelled scan: scan | clusters (one panel per resolution) | mask.

Each panel is the model grid (0.1 nm per pixel, display frame, row 0 at the top). Cluster ``j``
has colour ``PALETTE[j]`` and its number written in the panel's legend, with the chosen defect
clusters marked ``*``, so that a person can pick ``--defect-clusters`` by eye.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..render import BACKGROUND, INVALID_GREY, TEXT, _font, _png_bytes, to_rgb
from .label import AutoLabel

# 32 distinct colours, one per cluster at the default k (none grey: that is "no data"); larger k repeat them
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                    (227, 119, 194), (255, 0, 255), (188, 189, 34), (23, 190, 207), (255, 255, 255), (0, 0, 0),
                    (255, 220, 0), (0, 90, 60), (120, 0, 90), (90, 60, 255),
                    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
                    (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229), (57, 59, 121),
                    (99, 121, 57), (140, 109, 49), (132, 60, 57), (123, 65, 115), (0, 255, 120), (206, 219, 156)],
                   dtype=np.uint8)


def cluster_rgb(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` cluster labels (−1: no data) → ``(H, W, 3)`` uint8."""
    rgb = PALETTE[np.maximum(labels, 0) % len(PALETTE)]
    rgb[labels < 0] = INVALID_GREY
    return rgb


def preview_png(result: AutoLabel, path: str | Path | None = None, title: str = "", panel: int = 320,
                mask_title: str | None = None) -> bytes:
    """Write (and return) the preview PNG of ``result`` (``mask_title`` names the last panel;
    default: the defect clusters it was made of)."""
    image = to_rgb(result.prepared.image[0], result.prepared.valid)
    mask = np.where(result.model_mask[..., None], np.array([255, 255, 255], np.uint8),
                    (0.35 * image).astype(np.uint8))
    panels = [("scan (forward)", image)]
    for factor, labels in zip(result.scales, result.clusters):
        panels.append((f"clusters, 1/{factor} resolution" if factor > 1 else "clusters, model scale", cluster_rgb(labels)))
    panels.append((mask_title or f"defect mask ({', '.join(map(str, result.defect_clusters)) or 'no clusters'})", mask))
    h, w = image.shape[:2]
    scale = panel / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    font = _font(13)
    k = max(len(c) for c in result.centres)
    top, legend, gap = 40, 22, 8
    sheet = Image.new("RGB", (gap + len(panels) * (size[0] + gap), top + size[1] + legend + gap), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 4), title, fill=TEXT, font=font)
    for i, (name, rgb) in enumerate(panels):
        left = gap + i * (size[0] + gap)
        draw.text((left, top - 18), name, fill=TEXT, font=font)
        sheet.paste(Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST), (left, top))
    x = gap
    for j in range(k):  # legend: cluster numbers in their colours, defects starred
        draw.rectangle((x, top + size[1] + 5, x + 12, top + size[1] + 17), fill=tuple(int(v) for v in PALETTE[j % len(PALETTE)]))
        label = f"{j}{'*' if j in result.defect_clusters else ''}"
        draw.text((x + 15, top + size[1] + 4), label, fill=TEXT, font=font)
        x += 22 + 8 * len(label)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _png_bytes(sheet, path)
