"""Per-pixel features of a preprocessed scan, for the auto-labeller's k-means.

Every extractor maps the model input ``image`` ``(C, H, W)`` float32 (``preprocess.prepare``:
the surface at 0.1 nm per pixel, display frame, normalised) and its ``valid`` mask ``(H, W)`` to
``(F, H, W)`` float32 features on the same grid. Three kinds, chosen by :func:`make_features`:

``filters``      :class:`FilterBank`, no weights: a multi-scale bank of both channels.
``unet``         :class:`UNetEncoder`, the encoder of a trained stmwatch UNet (default: the
                 shipped ``models/weights/unet.pt``), each level upsampled to full resolution.
``PATH``         :class:`TorchScriptFeatures`, any TorchScript file mapping ``(1, C, H, W)`` to
                 ``(1, F, h, w)`` (e.g. an exported FCN-ResNet101 backbone, as in the method);
                 ``h, w`` other than ``H, W`` are resized bilinearly.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..double_tip import feature_band

log = logging.getLogger(__name__)


class Features(Protocol):
    name: str

    def __call__(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray: ...


# ---- the filter bank ------------------------------------------------------------------------------
def _gauss_kernels(sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D Gaussian of ``sigma`` px and its first and second derivatives (truncated at 3 sigma)."""
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-x**2 / (2 * sigma**2))
    g /= g.sum()
    return g, -x / sigma**2 * g, (x**2 / sigma**4 - 1 / sigma**2) * g


def _separable(x: torch.Tensor, k_rows: torch.Tensor, k_cols: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, 1, H, W)`` filtered with ``k_rows`` along rows (axis H) then ``k_cols`` along
    columns (axis W), reflect-padded: same size out."""
    pr, pc = len(k_rows) // 2, len(k_cols) // 2
    x = F.conv2d(F.pad(x, (0, 0, pr, pr), mode="reflect" if x.shape[2] > pr else "replicate"),
                 k_rows.view(1, 1, -1, 1))
    return F.conv2d(F.pad(x, (pc, pc, 0, 0), mode="reflect" if x.shape[3] > pc else "replicate"),
                    k_cols.view(1, 1, 1, -1))


def gaussian(x: torch.Tensor, sigma: float, d_rows: int = 0, d_cols: int = 0) -> torch.Tensor:
    """Gaussian (derivative of order ``d_rows``, ``d_cols`` ≤ 2) of ``x`` ``(N, 1, H, W)``."""
    kernels = _gauss_kernels(sigma)
    return _separable(x, kernels[d_rows], kernels[d_cols])


ORIENTATION_WEIGHT = 3.0  # coherence·(cos 2θ, sin 2θ) ∈ [-1, 1] scaled to weigh like ±3 robust sigmas


class FilterBank:
    """The weight-free default: for each channel, on its lattice-free, terrace-free residual
    (``double_tip.feature_band`` with no low-pass: the lattice's sharp Fourier peaks brought down to
    the spectrum's median, then a Gaussian high-pass of ``terrace_nm``):

    - the residual smoothed at each of ``sigmas_nm`` (signed: protrusions > 0, pits < 0);
    - the scale-normalised Laplacian of Gaussian at each sigma (blobs of that size);
    - local contrast (Gaussian-weighted RMS of the residual at the largest sigma);
    - with ``edges``: the gradient magnitude of the raw image at the middle sigma (step edges) and
      the structure tensor's orientation as ``coherence · (cos 2θ, sin 2θ)`` (rows along x or
      along y: the 2×1 and 1×2 domains). Off at the model scale, where they split the lattice
      by its rows rather than find defects; :func:`..label.autolabel` turns them on at the
      coarser resolutions, which are there to separate terraces and domains;
    - with ``texture`` (also at the coarser resolutions): each response replaced by its local
      energy (|response| smoothed over the largest sigma; the orientation smoothed as it
      is), so that clusters follow regions, not the crests and troughs of the rows;
    - ``soft`` > 0: each standardised feature z becomes ``soft · asinh(z / soft)`` (linear near 0,
      logarithmic far out), so that a few extreme pixels (the frame's border, a scar) do not take
      a cluster of their own; used at the coarser resolutions.

    ``(C · (2·len(sigmas) + 1 [+ 3 with edges]), H, W)`` features; each is divided by its robust spread over the
    valid pixels, so that k-means weighs them alike.
    """

    name = "filters"

    def __init__(self, nm_per_px: float = 0.1, sigmas_nm: tuple[float, ...] = (0.1, 0.2, 0.35),
                 terrace_nm: float = 1.2, edges: bool = False, soft: float = 0.0, texture: bool = False):
        self.nm_per_px, self.sigmas_nm, self.terrace_nm = nm_per_px, tuple(sigmas_nm), terrace_nm
        self.edges, self.soft, self.texture = edges, soft, texture

    def __call__(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = []
        sig = [s / self.nm_per_px for s in self.sigmas_nm]
        for channel in np.asarray(image, dtype=np.float32):
            residual = feature_band(channel, valid, self.nm_per_px, small_nm=0.0, large_nm=self.terrace_nm)
            r = torch.from_numpy(residual.astype(np.float32))[None, None]
            raw = torch.from_numpy(np.ascontiguousarray(channel, dtype=np.float32))[None, None]
            for s in sig:
                out.append(gaussian(r, s))
            for s in sig:
                out.append(-(s**2) * (gaussian(r, s, 2, 0) + gaussian(r, s, 0, 2)))
            out.append(torch.sqrt(gaussian(r * r, sig[-1]).clamp_min(0)))
            if not self.edges:
                continue
            s = sig[len(sig) // 2]
            gr, gc = gaussian(raw, s, 1, 0), gaussian(raw, s, 0, 1)
            out.append(torch.hypot(gr, gc) * s)
            jrr, jcc, jrc = (gaussian(v, 2 * s) for v in (gr * gr, gc * gc, gr * gc))
            out.append((jrr - jcc) / (jrr + jcc + 1e-6))  # orientation (doubled angle) times coherence:
            out.append(2 * jrc / (jrr + jcc + 1e-6))  # rows along x vs along y, i.e. 2x1 vs 1x2 domains
        if self.texture:  # energy of each response over a neighbourhood; orientation kept signed
            wide = sig[-1]
            per = len(out) // len(image)
            out = [gaussian(f if (i % per) >= per - 2 and self.edges else f.abs(), wide) for i, f in enumerate(out)]
        feats = torch.cat(out, dim=1)[0].numpy()
        per = len(feats) // len(image)
        oriented = np.zeros(len(feats), dtype=bool)
        if self.edges:  # already on a fixed scale (-1..1): not standardised, where a near-constant
            oriented[[i for i in range(len(feats)) if i % per >= per - 2]] = True  # map would blow up noise
        feats[~oriented] = standardise(feats[~oriented], valid, self.soft)
        feats[oriented] *= ORIENTATION_WEIGHT
        return feats


def standardise(features: np.ndarray, valid: np.ndarray, soft: float = 0.0) -> np.ndarray:
    """Each feature ``(F, H, W)`` minus its median over ``valid``, over its robust spread (MAD ×
    1.4826; the standard deviation where the MAD is 0), then ``asinh``: linear within a few
    spreads, logarithmic beyond, so that a few extreme pixels (a scar, a cluster of adsorbates)
    do not take most of k-means' clusters; float32."""
    features = np.asarray(features, dtype=np.float32)
    sel = features[:, valid] if valid.any() else features.reshape(len(features), -1)
    med = np.median(sel, axis=1)
    mad = np.median(np.abs(sel - med[:, None]), axis=1) * 1.4826
    spread = np.where(mad > 1e-8, mad, sel.std(axis=1) + 1e-8)
    z = (features - med[:, None, None]) / spread[:, None, None]
    return (np.arcsinh(z / soft) * soft if soft else z).astype(np.float32)


# ---- network features ------------------------------------------------------------------------------
def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=False)


def _padded(image: np.ndarray, multiple: int) -> torch.Tensor:
    """``(1, C, H', W')`` with H', W' the next multiples of ``multiple`` (zero = the median)."""
    c, h, w = image.shape
    ph, pw = -h % multiple, -w % multiple
    return torch.from_numpy(np.pad(np.asarray(image, dtype=np.float32), ((0, 0), (0, ph), (0, pw))))[None]


class UNetEncoder:
    """The encoder of a stmwatch UNet (:mod:`..unet`): the output of each down block and of the
    bottleneck, each upsampled bilinearly to the input grid, ``levels`` of them from the finest;
    robustly standardised."""

    name = "unet"

    def __init__(self, weights: str | Path | None = None, levels: int = 3):
        from ..unet import load_checkpoint

        path = Path(weights) if weights else Path(__file__).resolve().parent.parent / "weights" / "unet.pt"
        self.model, _ = load_checkpoint(path)
        self.levels = levels
        self.path = path

    def __call__(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        h, w = image.shape[1:]
        x = _padded(np.where(valid, image, 0.0), self.model.multiple)
        maps = []
        with torch.inference_mode():
            for block in self.model.down:
                x = block(x)
                maps.append(x)
                x = self.model.pool(x)
            maps.append(self.model.bottleneck(x))
            out = [_resize(m, tuple(maps[0].shape[-2:])) for m in maps[:self.levels]]
            feats = torch.cat(out, dim=1)[0, :, :h, :w].numpy()
        return standardise(feats, valid)


class TorchScriptFeatures:
    """Any TorchScript module from a file: ``(1, C, H, W)`` float32 in (the model input; a module
    that wants three channels gets (forward, backward, mean)), ``(1, F, h, w)`` out, resized to
    ``(H, W)``; robustly standardised. ``channels`` is what the module expects (default: tried
    with the image's own channels first, then three)."""

    def __init__(self, path: str | Path, channels: int | None = None, multiple: int = 32):
        self.path = Path(path)
        try:
            self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError for a bad file
            raise ValueError(f"{self.path}: not a TorchScript model ({exc.__class__.__name__}: {exc})") from None
        self.channels, self.multiple = channels, multiple
        self.name = f"torchscript:{self.path.name}"

    def _input(self, image: np.ndarray, channels: int) -> np.ndarray:
        if channels == image.shape[0]:
            return image
        if channels == 3 and image.shape[0] == 2:
            return np.concatenate([image, image.mean(axis=0, keepdims=True)])
        if channels == 1:
            return image.mean(axis=0, keepdims=True)
        raise ValueError(f"{self.path}: cannot feed {image.shape[0]} channels to a model wanting {channels}")

    def __call__(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        h, w = image.shape[1:]
        image = np.where(valid, image, 0.0).astype(np.float32)
        tries = [self.channels] if self.channels else [image.shape[0], 3]
        error = None
        for channels in tries:
            try:
                x = _padded(self._input(image, channels), self.multiple)
                with torch.inference_mode():
                    y = self.module(x)
                if isinstance(y, dict):  # torchvision segmentation models return {"out": ...}
                    y = y["out"]
                if y.ndim != 4 or y.shape[0] != 1:
                    raise ValueError(f"output of shape {tuple(y.shape)}, not (1, F, h, w)")
                y = _resize(y.float(), tuple(x.shape[-2:]))[0, :, :h, :w]
                self.channels = channels
                return standardise(y.numpy(), valid)
            except (RuntimeError, ValueError) as exc:
                error = exc
        raise ValueError(f"{self.path}: the model failed on a (1, C, H, W) input: {error}")


def make_features(spec: str, nm_per_px: float = 0.1) -> Features:
    """``"filters"`` (default), ``"unet"`` or ``"unet:PATH"`` (a stmwatch checkpoint), or the path of
    a TorchScript file."""
    if spec in ("", "filters"):
        return FilterBank(nm_per_px)
    if spec == "unet":
        return UNetEncoder()
    if spec.startswith("unet:"):
        return UNetEncoder(spec[5:])
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"features {spec!r}: not 'filters', 'unet', 'unet:PATH' nor an existing TorchScript file")
    return TorchScriptFeatures(path)
