"""``stmwatch service print|install``: the systemd unit for this install."""
from __future__ import annotations

import sys

HELP = "print or install the systemd unit (Type=notify, watchdog, hardened); starts nothing"
DESCRIPTION = """print: write the systemd unit, with the paths of this stmwatch, to stdout.
install: write it to /etc/systemd/system/stmwatch.service (or --dest) and, if it does not exist,
a service config (database in /var/lib/stmwatch, engine cache in /var/cache/stmwatch). Nothing is
started or enabled: run 'systemctl daemon-reload && systemctl enable --now stmwatch' yourself."""


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("print", "install"))
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="config the service reads (default /etc/stmwatch/config.toml)")
    parser.add_argument("--dest", default="/etc/systemd/system", metavar="DIR",
                        help="where install writes stmwatch.service (default /etc/systemd/system)")
    parser.add_argument("--no-config", action="store_true", help="install: do not write a config file")


def run(args) -> int:
    from stmwatch.daemon.service import DEFAULT_CONFIG, HOME_PREFIXES, install, installed_command, render_unit

    config = args.config or DEFAULT_CONFIG
    command = installed_command()
    if command[0].startswith(HOME_PREFIXES):
        print(f"warning: {command[0]} is under a home directory; the service's dynamic user may not be able "
              "to read it. Install stmwatch system-wide (e.g. a venv in /opt/stmwatch) for the service.",
              file=sys.stderr)
    if args.action == "print":
        sys.stdout.write(render_unit(command, config))
        return 0
    try:
        written = install(args.dest, config, write_config=not args.no_config, command=command)
    except OSError as exc:
        print(f"error: cannot write the unit: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print("next: systemctl daemon-reload && systemctl enable --now stmwatch")
    return 0
