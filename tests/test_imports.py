"""The import rule of docs/design.md, checked by import-linter's contracts in pyproject.toml."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "lint_imports.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_contracts_are_kept():
    pytest.importorskip("importlinter")
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_the_contracts_name_every_layer():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")
    assert layers["layers"] == ["stmwatch.daemon", "stmwatch.models", "stmwatch.drivers"]
    assert sorted(config["root_packages"]) == sorted(layers["layers"])
