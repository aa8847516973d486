"""Query results as files for analysis elsewhere: HDF5 (``stmwatch query --format hdf5``).

HDF5 rather than Parquet: h5py is one wheel of a few MB that needs only numpy, while Parquet needs
pyarrow (a ~40 MB wheel) or fastparquet (pandas and more); HDF5 files also open in MATLAB, Igor,
Origin and HDFView, which labs already use. h5py is the optional extra ``[hdf5]``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def column_unit(name: str) -> str:
    """The unit of a query column, from its name (``x_m`` metres, ``x_px`` pixels, ...)."""
    if name.endswith("_m"):
        return "m"
    if name.endswith("_px") or name in ("columns", "rows"):
        return "px"
    if name.endswith("_deg"):
        return "deg"
    return ""


def write_hdf5(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: str | Path, table: str) -> Path:
    """Write ``rows`` as the group ``/<table>`` of an HDF5 file, one 1-D dataset per column
    (numbers as float64 or int64 with NaN for a missing float; text as UTF-8 strings, ``""`` for
    missing, lists and dicts as JSON), each with its ``units`` attribute. The file is replaced if it exists."""
    try:
        import h5py
    except ImportError:
        raise RuntimeError("--format hdf5 needs h5py, an optional extra: pip install 'stmwatch[hdf5]'") from None
    path = Path(path)
    with h5py.File(path, "w") as fh:
        group = fh.create_group(table)
        group.attrs["rows"] = len(rows)
        for name in columns:
            values = [row.get(name) for row in rows]
            present = [v for v in values if v is not None]
            if present and all(isinstance(v, bool | int) for v in present) and len(present) == len(values):
                data = np.asarray(values, dtype=np.int64)
            elif present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
                data = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
            else:
                data = np.asarray(["" if v is None else json.dumps(v) if isinstance(v, dict | list) else str(v)
                                   for v in values], dtype=object)
                group.create_dataset(name, data=data, dtype=h5py.string_dtype("utf-8"))
                group[name].attrs["units"] = column_unit(name)
                continue
            group.create_dataset(name, data=data)
            group[name].attrs["units"] = column_unit(name)
    return path
