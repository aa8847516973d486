"""stmwatch for the scientific-Python user: read a scan, find and name its defects.

>>> import stmwatch
>>> scan = stmwatch.read_sxm("scan.sxm")                     # a Scan (display frame, metres)
>>> analysis = stmwatch.analyse(scan, surface="si001h")     # an Analysis: defects, counts, warnings
>>> ds = analysis.to_xarray()                               # needs the [xarray] extra

This package sits above the others (``stmwatch.daemon``, ``stmwatch.models``,
``stmwatch.drivers``) and imports them only when a name is first used, so ``import stmwatch`` is
quick and loads neither torch nor zmq. See ``docs/api.md``.
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("stmwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from stmwatch.drivers.scan import Channel, Scan
    from stmwatch.drivers.sxm import ScanReadError, read_sxm, write_sxm
    from stmwatch.models.analyse import Analyser, Analysis
    from stmwatch.models.defects import Defect

# public name -> the module that defines it, imported on first use (PEP 562)
_LAZY = {
    "Scan": "stmwatch.drivers.scan",
    "Channel": "stmwatch.drivers.scan",
    "read_sxm": "stmwatch.drivers.sxm",
    "write_sxm": "stmwatch.drivers.sxm",
    "ScanReadError": "stmwatch.drivers.sxm",
    "Analysis": "stmwatch.models.analyse",
    "Analyser": "stmwatch.models.analyse",
    "Defect": "stmwatch.models.defects",
}

__all__ = ["__version__", "analyse", "load_models", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stmwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_models(surface: str | None = None, *, support: str | os.PathLike | None = None,
                backend: str | None = None, config: str | os.PathLike | None = None) -> Analyser:
    """The segmenter and few-shot classifier for ``surface`` (``si001h``, ``ge001``, ``tio2110``;
    default ``[models] surface`` of ``config``, else the built-in default), as ``stmwatch process``
    loads them. Load once and pass as ``models=`` to :func:`analyse` for many scans.

    ``support`` is a support-set folder (``DIR/<class>/*.npy|png``; default: the shipped one),
    ``backend`` ``auto | torch | onnxruntime | tensorrt``, ``config`` a ``config.toml``."""
    from stmwatch.daemon.config import load_config
    from stmwatch.models.load import load_analyser

    analyser = load_analyser(load_config(config), surface=surface, backend=backend, support=support)
    return analyser


def analyse(scan: Scan | str | os.PathLike, surface: str | None = None, models: Analyser | None = None,
            **load: Any) -> Analysis:
    """Find and name the defects of ``scan`` (a :class:`Scan`, or the path of an ``.sxm`` file).

    ``models`` is what :func:`load_models` returned (reuse it for many scans); without it the
    models for ``surface`` are loaded here (``load`` goes to :func:`load_models`). Giving both
    ``models`` and a different ``surface`` is an error. Returns an :class:`Analysis`: ``defects``
    (display-frame pixels ``row``/``col``, scanner-frame metres ``x_m``/``y_m``, ``label``),
    ``counts``, ``warnings`` and ``to_xarray()``.
    """
    from stmwatch.drivers.scan import Scan
    from stmwatch.drivers.sxm import read_sxm

    if not isinstance(scan, Scan):
        scan = read_sxm(scan)
    if models is None:
        models = load_models(surface, **load)
    else:
        loaded = getattr(models.segmenter, "surface", None)
        if surface is not None and loaded is not None and loaded.key != surface:
            raise ValueError(f"models were loaded for surface {loaded.key!r}, not {surface!r}")
        if load:
            raise TypeError(f"{sorted(load)} apply when loading models; models= is already loaded")
    return models.analyse(scan)
