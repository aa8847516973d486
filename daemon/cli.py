"""The ``stmwatch`` command line: one subcommand per module in ``stmwatch.daemon.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
and keeps heavy imports (torch, zmq) inside ``run`` so that ``stmwatch --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> module under stmwatch.daemon.commands, in the order --help lists them
COMMANDS = {
    "demo": "demo",
    "run": "run",
    "info": "info",
    "process": "process",
    "query": "query",
    "listen": "listen",
    "dashboard": "dashboard",
    "simulate": "simulate",
    "simulate-stream": "simulate_stream",
    "autolabel": "autolabel",
    "train": "train",
    "eval": "evaluate",
    "support": "support",
    "adapt": "adapt",
    "bench": "bench",
    "service": "service",
    "keys": "keys",
}


def installed_version() -> str:
    """The installed distribution's version (``stmwatch.__version__`` reads the same metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stmwatch")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stmwatch",
        description="Live defect analysis beside a scanning tunnelling microscope.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'stmwatch COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"stmwatch {installed_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"stmwatch.daemon.commands.{module_name}")
        command = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=getattr(module, "DESCRIPTION", module.HELP),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
