"""Files that stmwatch writes open in nanonispy, the reference reader named in the design, with
the same arrays as stmwatch's own reader.

nanonispy needs numpy < 1.24 (it uses ``np.float``), so it runs in its own virtual environment:
``.ci/run`` makes ``.venv-nanonispy/`` (or set ``STMWATCH_NANONISPY_PYTHON`` to a Python that
imports nanonispy). Where neither exists the test is skipped, saying why.
nanonispy returns each frame as stored in the file (an 'up' scan bottom line first, a backward
frame's lines right to left) and reads only channels recorded in both directions.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import read_sxm, write_sxm
from stmwatch.models.sim.artefacts import Artefacts
from stmwatch.models.sim.simulate import simulate_scan

from .conftest import REPO, real_files

READER = r"""
import json, sys
import numpy as np
import nanonispy as nap
out = {}
for path in sys.argv[2:]:
    scan = nap.read.Scan(path)
    h = scan.header
    out[path] = {"pixels": [int(v) for v in h["scan_pixels"]], "range_m": [float(v) for v in h["scan_range"]],
                 "offset_m": [float(v) for v in h["scan_offset"]], "bias_v": float(h["bias"]),
                 "scan_time": [float(v) for v in h["scan_time"]], "acq_time": float(h["acq_time"]),
                 "z_controller": {k: list(v) for k, v in h.get("z-controller", {}).items()},
                 "channels": list(scan.signals)}
    np.savez(f"{path}.npz", **{f"{name}|{d}": frames[d] for name, frames in scan.signals.items() for d in frames})
json.dump(out, open(sys.argv[1], "w"))
"""


def nanonispy_python() -> Path | None:
    """The Python that has nanonispy: ``$STMWATCH_NANONISPY_PYTHON`` or ``.venv-nanonispy``."""
    env = os.environ.get("STMWATCH_NANONISPY_PYTHON")
    candidate = Path(env) if env else REPO / ".venv-nanonispy" / "bin" / "python"
    return candidate if candidate.exists() else None


def stored(frame: np.ndarray, direction: str, backward: bool) -> np.ndarray:
    """Display frame → file order, written out here independently of the writer."""
    out = frame[::-1] if direction == "up" else frame
    return out[:, ::-1] if backward else out


def written_files(folder: Path) -> list[Path]:
    """What stmwatch writes: simulator scans of each surface (every artefact on, an aborted scan
    with NaN lines among them), hand-made scans up and down at an angle, and real files rewritten."""
    paths = []
    for i, surface in enumerate(("si001h", "ge001", "tio2110")):
        scan, _ = simulate_scan(surface, 10 + i, pixels=(48, 40), artefacts=Artefacts.all())
        paths.append(write_sxm(scan, folder / f"sim_{surface}.sxm"))
    aborted, _ = simulate_scan("si001h", 3, pixels=(32, 32), artefacts=Artefacts(aborted=2.0))
    assert aborted.partial
    paths.append(write_sxm(aborted, folder / "sim_aborted.sxm"))
    rng = np.random.default_rng(0)
    for direction, angle in (("up", 30.0), ("down", -135.1)):
        channels = [Channel(name, unit, *(rng.normal(size=(6, 9)).astype(np.float32) for _ in range(2)), index=i)
                    for i, (name, unit) in enumerate((("Z", "m"), ("Current", "A")))]
        scan = Scan(channels, pixels=(9, 6), range_m=(3e-8, 2e-8), offset_m=(1.5e-9, -2.5e-9),
                    angle_deg=angle, direction=direction, bias_v=-1.8)
        paths.append(write_sxm(scan, folder / f"made_{direction}.sxm"))
    for path in real_files():
        scan = read_sxm(path)
        if all(len(c.directions) == 2 for c in scan.channels) and scan.bias_v is not None:
            paths.append(write_sxm(scan, folder / f"real_{path.name}"))
    return paths


def test_nanonispy_reads_every_file_the_writer_makes(tmp_path):
    python = nanonispy_python()
    if python is None:
        pytest.skip("nanonispy is not installed: .ci/run makes .venv-nanonispy (nanonispy, numpy<1.24), "
                    "or set STMWATCH_NANONISPY_PYTHON; it could not be made here")
    paths = written_files(tmp_path)
    assert len(paths) >= 8
    result = tmp_path / "nanonispy.json"
    proc = subprocess.run([str(python), "-c", READER, str(result), *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nanonispy failed:\n{proc.stderr[-3000:]}"
    seen = json.loads(result.read_text())
    for path in paths:
        ours, theirs = read_sxm(path), seen[str(path)]
        assert theirs["pixels"] == list(ours.pixels), path.name
        np.testing.assert_allclose(theirs["range_m"], ours.range_m, rtol=1e-12, err_msg=path.name)
        np.testing.assert_allclose(theirs["offset_m"], ours.offset_m, rtol=1e-12, atol=1e-20, err_msg=path.name)
        assert theirs["bias_v"] == pytest.approx(ours.bias_v, rel=1e-12)
        assert theirs["channels"] == [c.name for c in ours.channels]
        arrays = np.load(f"{path}.npz")
        for ch in ours.channels:
            for d in ("forward", "backward"):
                np.testing.assert_array_equal(arrays[f"{ch.name}|{d}"],
                                              stored(getattr(ch, d), ours.direction, d == "backward"),
                                              err_msg=f"{path.name} {ch.name} {d}")
        if path.name.startswith("sim_"):
            # the simulator's line time and set point reach nanonispy's parsed header
            assert theirs["scan_time"] == [0.5, 0.5] and theirs["acq_time"] == ours.pixels[1] * 2 * 0.5
            assert theirs["z_controller"]["Setpoint"][0].endswith(" A")
