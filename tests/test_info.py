"""``stmwatch info`` and ``stmwatch --help``, run as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

from .conftest import BAD, REAL, real_files


def stmwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stmwatch.daemon", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_command_with_an_explanation():
    out = stmwatch("--help")
    assert out.returncode == 0
    for command in ("info", "demo", "process", "run", "query", "simulate"):
        assert command in out.stdout


def test_every_command_and_target_explains_itself():
    """``--help`` works for every command and every sub-target (argparse %-formats help texts)."""
    from stmwatch.daemon.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        assert command.format_help(), name
        for action in command._actions:
            if isinstance(action.choices, dict):  # a sub-parser per target
                for target in action.choices.values():
                    assert target.format_help(), name


def test_info_json_matches_manifest_and_bad_file_gives_one_error_line(manifest):
    truth = {e["file"]: e for e in manifest["files"]}
    files = [str(p) for p in real_files()]
    bad = str(BAD / "truncated_half_data.sxm")
    out = stmwatch("info", "--json", files[0], bad, *files[1:])
    assert out.returncode == 2
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 1 and bad in errors[0] and "truncated" in errors[0]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    for line in lines:
        expected = truth[line["file"].rsplit("/", 1)[-1]]
        assert line["pixels"] == expected["pixels"]
        assert line["direction"] == expected["direction"]
        assert line["angle_deg"] == expected["angle_deg"]
        names = {(c["name"], d) for c in line["channels"] for d in c["directions"]}
        assert names == {(c["name"], c["direction"]) for c in expected["channels"]}
        assert set(line) == {"file", "pixels", "range_m", "offset_m", "angle_deg", "direction", "partial", "channels"}
    partial = {line["file"].rsplit("/", 1)[-1]: line["partial"] for line in lines}
    assert partial["stm_moire_10nm_aborted.sxm"] is True and partial["stm_moire_10nm.sxm"] is False


def test_info_table_shows_the_geometry():
    out = stmwatch("info", str(REAL / "stm_gen5_au_mica_molecules.sxm"))
    assert out.returncode == 0
    assert "256 x 256" in out.stdout and "135.1" in out.stdout and "4 x 4 nm" in out.stdout


def test_wheel_lists_every_package_the_source_has():
    """A non-editable ``pip install .`` installs only the packages pyproject names: every folder
    with an ``__init__.py`` must be one of them (a missing one loses commands silently)."""
    import tomllib

    from .conftest import REPO

    names = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"daemon": "stmwatch.daemon", "drivers": "stmwatch.drivers", "models": "stmwatch.models"}
    for top, package in folders.items():
        for init in (REPO / top).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / top).parts
            assert ".".join((package, *parts)) in names, init
