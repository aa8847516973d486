"""Small pieces the command lines share: checked argument types and checks on the files given."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (else a usage error, exit 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value

    return parse


def surface_key(text: str) -> str:
    """An argparse ``type``: a trained surface's key (else a usage error naming the known ones)."""
    from stmwatch.models.surfaces import SURFACES

    if text not in SURFACES:
        raise argparse.ArgumentTypeError(f"unknown surface {text!r} (known: {', '.join(sorted(SURFACES))})")
    return text


def first_shared_stem(paths: Iterable[str | Path]) -> tuple[str | Path, str | Path] | None:
    """The first two of ``paths`` with one file name stem (what each writes, ``OUT/<stem>...``,
    would overwrite the other's), or None."""
    first: dict[str, str | Path] = {}
    for path in paths:
        other = first.setdefault(Path(path).stem, path)
        if other != path:
            return other, path
    return None
