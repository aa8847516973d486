"""Commands with sub-commands (``train unet``, ``bench segment`` ...): one target module each, in
:mod:`stmwatch.daemon.targets` (the command-line halves; the work is done in ``models``).

Each target module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` like a
command module; a target that is not built yet is left out of ``--help``.
"""
from __future__ import annotations

import argparse
import importlib


def add_targets(parser, targets: dict[str, str], dest: str) -> None:
    """Add one sub-parser per importable module in ``targets`` (name -> dotted module)."""
    sub = parser.add_subparsers(dest=dest, metavar=dest.upper(), required=True)
    for name, module_name in targets.items():
        module = importlib.import_module(module_name)
        target = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=getattr(module, "DESCRIPTION", module.HELP),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(target)
        target.set_defaults(target_run=module.run)


def run_target(args) -> int:
    return int(args.target_run(args) or 0)
