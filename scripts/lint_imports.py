#!/usr/bin/env python3
"""Run ``lint-imports`` (the contracts in pyproject.toml) on this source tree.

import-linter finds a package's modules in the folder its import spec names. ``stmwatch`` is a
package of its own (``api/``: ``__version__`` and the Python API) whose three layers live in other
folders (``daemon/``, ``models/``, ``drivers/``, joined by setuptools' ``package-dir``), which
import-linter cannot follow. So this script lays out a view of the tree as a namespace package --
a temporary ``stmwatch/`` folder of links to the three layers -- puts it first on ``PYTHONPATH``
and runs ``lint-imports`` there, passing its arguments on. Exit status: lint-imports'.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("daemon", "models", "drivers")


def main(argv: list[str]) -> int:
    # lint-imports of this interpreter (not whichever is first on PATH), so it sees this tree
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    with tempfile.TemporaryDirectory(prefix="stmwatch-lint-") as view:
        package = Path(view, "stmwatch")
        package.mkdir()
        for layer in LAYERS:
            (package / layer).symlink_to(ROOT / layer, target_is_directory=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [view, os.environ.get("PYTHONPATH")]))}
        return subprocess.run([*command, "--no-cache", *argv], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
