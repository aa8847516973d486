"""A compact UNet that maps a preprocessed scan to a per-pixel defect probability.

Input: ``(batch, channels, H, W)`` float32 at the surface's model scale (0.1 nm per pixel), the
output of ``preprocess.prepare`` (channels = forward and backward topography, normalised). Output:
``(batch, 1, H, W)`` *logits*; ``torch.sigmoid`` gives the probability that a pixel is defect.
``H`` and ``W`` must be multiples of ``2 ** depth``; :func:`tiled_predict` takes care of that for
scans of any size, in bounded memory.

Weights live in a small checkpoint dict (:func:`save_checkpoint` / :func:`load_checkpoint`):
``{"config": UNetConfig as dict, "state_dict": ..., "meta": {...}}``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclasses.dataclass
class UNetConfig:
    """Shape of the network: ``width`` channels at full resolution, doubled at each of ``depth``
    down-sampling steps; ``dropout`` is applied (training only) at the bottleneck."""

    in_channels: int = 2
    width: int = 8
    depth: int = 3
    dropout: float = 0.1


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU (resolution unchanged)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections (Ronneberger et al. 2015), small enough for a CPU."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig()
        c = self.config
        widths = [c.width * 2**i for i in range(c.depth + 1)]
        self.down = nn.ModuleList()
        cin = c.in_channels
        for w in widths[:-1]:
            self.down.append(_block(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(_block(widths[-2], widths[-1]), nn.Dropout2d(c.dropout))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in range(c.depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.merge.append(_block(2 * widths[i - 1], widths[i - 1]))
        self.head = nn.Conv2d(widths[0], 1, 1)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.config.depth

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The contracting half: ``(bottleneck output, skip tensors from the top level down)``."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return self.bottleneck(x), skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, 1, H, W)`` logits."""
        x, skips = self.encode(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class Probability(nn.Module):
    """The UNet followed by a sigmoid, channel dropped: ``(B, C, H, W)`` → ``(B, H, W)`` in [0, 1].
    This is what the inference backends export and run."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.unet(x))[:, 0]


# ---- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(model: UNet, path: str | Path, meta: dict | None = None, **extra) -> Path:
    """Write the weights (and anything in ``extra``, e.g. an optimiser state) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"config": dataclasses.asdict(model.config), "state_dict": model.state_dict(), "meta": meta or {}}
    state.update(extra)
    tmp = path.with_name(f".{path.name}.part")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[UNet, dict]:
    """Read a checkpoint → ``(model in eval mode, the whole checkpoint dict)``."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = UNet(UNetConfig(**state["config"]))
    model.load_state_dict(state["state_dict"])
    model.eval()
    return model, state


def model_hash(model: nn.Module) -> str:
    """sha256 (hex) of the weights: identifies a model for versions and cached engines."""
    buf = io.BytesIO()
    for key, tensor in sorted(model.state_dict().items()):
        buf.write(key.encode())
        buf.write(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hashlib.sha256(buf.getvalue()).hexdigest()


# ---- tiled inference ---------------------------------------------------------------------------
def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start indices of tiles of size ``tile`` covering ``[0, length)`` (``length >= tile``), the
    last one flush with the end."""
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _window(tile: int, margin: int, first: bool, last: bool) -> np.ndarray:
    """1-D blending weight: 0 in the ``margin`` at each side that has a neighbouring tile (tile
    edges see less context; the neighbour's inside covers them), 1 elsewhere."""
    w = np.ones(tile, dtype=np.float32)
    if margin > 0:
        if not first:
            w[:margin] = 0.0
        if not last:
            w[tile - margin:] = 0.0
    return w


def tiled_predict(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], tile: int = 256,
                  overlap: int = 32, batch_size: int = 8) -> np.ndarray:
    """Per-pixel probability for an image of any size, tile by tile.

    ``image`` is ``(C, H, W)`` float32 (NaN is read as 0, the normalised median); ``predict`` maps
    a ``(B, C, tile, tile)`` batch to ``(B, tile, tile)`` probabilities (a backend). Images smaller
    than a tile are zero-padded. Of each tile only the inside is used: the outer ``overlap // 2``
    pixels are dropped where a neighbouring tile covers them (its inside does, since tiles advance
    by ``tile - overlap``); pixels covered by two insides get their mean. Memory: ``batch_size`` tiles plus two ``(H, W)``
    accumulators. Returns ``(H, W)`` float32.
    """
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    image = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    channels, height, width = image.shape
    ph, pw = max(height, tile), max(width, tile)
    if (ph, pw) != (height, width):
        image = np.pad(image, ((0, 0), (0, ph - height), (0, pw - width)))
    stride = tile - overlap
    margin = overlap // 2
    rows, cols = tile_starts(ph, tile, stride), tile_starts(pw, tile, stride)
    total = np.zeros((ph, pw), dtype=np.float32)
    weight = np.zeros((ph, pw), dtype=np.float32)
    positions = [(r, c) for r in rows for c in cols]
    for i in range(0, len(positions), batch_size):
        chunk = positions[i:i + batch_size]
        batch = np.stack([image[:, r:r + tile, c:c + tile] for r, c in chunk])
        probs = np.asarray(predict(np.ascontiguousarray(batch)), dtype=np.float32)
        for (r, c), p in zip(chunk, probs):
            w = np.outer(_window(tile, margin, r == 0, r == rows[-1]), _window(tile, margin, c == 0, c == cols[-1]))
            total[r:r + tile, c:c + tile] += w * p
            weight[r:r + tile, c:c + tile] += w
    assert weight.min() > 0, "tiles leave a pixel uncovered"
    return (total / weight)[:height, :width]


# The flips that keep scan lines horizontal, as (flip rows, flip columns): the training
# augmentation uses the same four (both channels flipped alike, never swapped).
FLIPS = {1: ((False, False),), 2: ((False, False), (False, True)),
         4: ((False, False), (False, True), (True, False), (True, True))}


def flip_predictions(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], flips: int = 1,
                     tile: int = 256, overlap: int = 32, batch_size: int = 8) -> list[np.ndarray]:
    """:func:`tiled_predict` of each of ``flips`` (1, 2 or 4) mirror images of ``image``
    ``(C, H, W)`` (identity; + left-right; + up-down and both), each flipped back: ``flips``
    ``(H, W)`` float32 maps in ``image``'s frame."""
    if flips not in FLIPS:
        raise ValueError(f"flips must be one of {sorted(FLIPS)}, not {flips}")
    out = []
    for flip_rows, flip_cols in FLIPS[flips]:
        axes = tuple(axis for axis, flip in ((1, flip_rows), (2, flip_cols)) if flip)
        flipped = np.flip(image, axes) if axes else image
        prob = tiled_predict(np.ascontiguousarray(flipped), predict, tile, overlap, batch_size)
        out.append(np.flip(prob, tuple(a - 1 for a in axes)) if axes else prob)
    return out


def flip_averaged_predict(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], flips: int = 1,
                          tile: int = 256, overlap: int = 32, batch_size: int = 8) -> np.ndarray:
    """The mean of :func:`flip_predictions` (test-time augmentation: ``flips`` times the cost of
    one prediction), ``(H, W)`` float32 in ``image``'s frame."""
    total = np.zeros(image.shape[1:], dtype=np.float32)
    for prob in flip_predictions(image, predict, flips, tile, overlap, batch_size):
        total += prob
    return total / flips
