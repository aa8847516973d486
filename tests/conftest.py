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


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for this session (``tests/postgres.py``); skipped with the reason
    where it cannot be installed or started."""
    from .postgres import PostgresServer, PostgresUnavailable

    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        server.stop()
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """An empty database's URL: a SQLite file, and (second run) a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_server").url()
