"""Every shipped weight and support file is in the package data, so that `pip install .` (not
editable: the README's first command, a systemd deployment) carries it. A file left out installs
without error and is then missing at run time (the polarity maps were, until this test)."""
from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_tracked_weight_and_support_file_is_package_data():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are not known")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["stmwatch.models"]
    tracked = subprocess.run(["git", "ls-files", "models/weights", "models/support"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert any(name.endswith("fewshot_polarity.npz") for name in tracked)
    files = [name.removeprefix("models/") for name in tracked if not name.endswith(".py")]
    # setuptools' globs do not cross folders: "weights/*.pt" is not "weights/x/y.pt"
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
