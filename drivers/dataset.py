"""A :class:`~stmwatch.drivers.scan.Scan` (and its defects) as an ``xarray.Dataset``.

xarray is an optional extra (``pip install 'stmwatch[xarray]'``); it is imported only here, when
asked for. Layout:

* dims ``y`` (rows, display frame: row 0 at the top) and ``x`` (columns, left to right);
* coordinates ``x``, ``y`` in metres along the frame's axes, through the frame's centre at the
  scan's offset (for an unrotated scan these are the scanner-frame positions; ``y`` falls from
  top to bottom, as rows run down),
  and ``x_scanner``/``y_scanner`` ``(y, x)``: the scanner-frame metres of every pixel centre from
  ``Scan.pixel_to_scanner`` (they differ from ``x``/``y`` when the scan is rotated);
* one variable per channel and direction, ``<channel>_<direction>`` (e.g. ``Z_forward``), with
  its ``units``; lines never acquired are NaN;
* the defects as a table along dim ``defect``: ``defect_x_m``, ``defect_y_m`` (scanner frame),
  ``defect_row``, ``defect_col`` (display-frame pixels), ``defect_label``, ``defect_score``,
  ``defect_area_px`` (``ds[[...]].to_dataframe()`` gives a pandas table);
* attributes: the geometry, bias, acquisition time, source and warnings.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # scan.py imports this module (Scan.to_xarray): no import back at run time
    from .scan import Scan

DEFECT_FIELDS = ("x_m", "y_m", "row", "col", "label", "score", "area_px")


def _xarray():
    try:
        import xarray
    except ImportError:
        raise ImportError("Scan.to_xarray() needs xarray, an optional extra: "
                          "pip install 'stmwatch[xarray]'  (or: pip install xarray)") from None
    return xarray


def _defect_value(defect: Any, field: str):
    """A field of a defect given as an object (``models.defects.Defect``) or a dict (its
    ``as_dict()`` form, or a database row)."""
    if isinstance(defect, dict):
        key = {"row": "y_px", "col": "x_px"}.get(field, field)
        return defect.get(field, defect.get(key))
    if field == "score":
        return defect.label_score if getattr(defect, "label_score", None) is not None else defect.score
    return getattr(defect, field)


def scan_dataset(scan: Scan, defects: Iterable[Any] = (), warnings: Sequence[str] = ()):
    """``scan`` and ``defects`` as an ``xarray.Dataset`` (see the module docstring)."""
    xr = _xarray()
    nx, ny = scan.pixels
    width, height = scan.range_m
    u = ((np.arange(nx) + 0.5) / nx - 0.5) * width
    v = (0.5 - (np.arange(ny) + 0.5) / ny) * height
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    xs, ys = scan.pixel_to_scanner(rows, cols)
    coords = {
        "x": ("x", u + scan.offset_m[0], {"units": "m", "long_name": "x along the frame"}),
        "y": ("y", v + scan.offset_m[1], {"units": "m", "long_name": "y along the frame"}),
        "x_scanner": (("y", "x"), xs, {"units": "m", "long_name": "scanner-frame x of the pixel centre"}),
        "y_scanner": (("y", "x"), ys, {"units": "m", "long_name": "scanner-frame y of the pixel centre"}),
    }
    data = {}
    for ch in scan.channels:
        for direction, frame in zip(ch.directions, ch.frames()):
            data[f"{ch.name}_{direction}"] = (("y", "x"), frame, {"units": ch.unit, "channel": ch.name,
                                                                  "direction": direction})
    table = list(defects)
    for field in DEFECT_FIELDS:
        values = [_defect_value(d, field) for d in table]
        dtype = object if field == "label" else float
        data[f"defect_{field}"] = ("defect", np.asarray(values, dtype=dtype),
                                   {"units": {"x_m": "m", "y_m": "m", "row": "px", "col": "px",
                                              "area_px": "px"}.get(field, "")})
    attrs = {
        "pixels": list(scan.pixels), "range_m": list(scan.range_m), "offset_m": list(scan.offset_m),
        "angle_deg": scan.angle_deg, "direction": scan.direction, "partial": int(scan.partial),
        "source": str(scan.source) if scan.source else "",
        "warnings": list(warnings),
    }
    if scan.bias_v is not None:
        attrs["bias_v"] = scan.bias_v
    if scan.acquired is not None:
        attrs["acquired"] = scan.acquired.isoformat()
    return xr.Dataset(data, coords={k: (dims, values, meta) for k, (dims, values, meta) in coords.items()},
                      attrs=attrs)
