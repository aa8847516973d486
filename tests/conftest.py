"""Shared test fixtures: where ``../shared`` is, and small helpers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STMWATCH_SHARED", REPO.parent / "shared"))
REAL = SHARED / "data" / "real"
BAD = SHARED / "data" / "bad"

# CI has 2 cores; keep torch from oversubscribing them when tests run beside each other.
torch.set_num_threads(min(2, torch.get_num_threads()))


def real_files() -> list[Path]:
    return sorted(REAL.glob("*.sxm"))


def bad_files() -> list[Path]:
    return sorted(BAD.glob("*.sxm"))


@pytest.fixture(scope="session")
def manifest() -> dict:
    """``../shared/data/real/manifest.json``: facts read by an independent reader."""
    return json.loads((REAL / "manifest.json").read_text())
