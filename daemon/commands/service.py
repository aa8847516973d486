"""``stmwatch service print|install``: the systemd unit for this install."""
from __future__ import annotations

import sys
from pathlib import Path

HELP = "print or install the systemd unit (Type=notify, watchdog, hardened); starts nothing"
DESCRIPTION = """print: write the systemd unit, with the paths of this stmwatch, to stdout.
install: write it to /etc/systemd/system/stmwatch.service (or --dest) and, if it does not exist,
a service config (database in /var/lib/stmwatch, engine cache in /var/cache/stmwatch). Nothing is
started or enabled: run 'systemctl daemon-reload && systemctl enable --now stmwatch' yourself.

--watch DIR: the folder the microscope's scans appear in ([folder] path; named ReadOnlyPaths= in
the unit; [folder] polling = true when DIR is on a network share such as an SMB/CIFS mount, or
with --polling). --group G: a group that may read DIR, given to the service's dynamic user
(SupplementaryGroups=). --db URL: the database ([daemon] database); a URL with a password is
written instead to database-url beside the config (mode 0600) and passed to the service as a
systemd credential (LoadCredential=), never into the config or the unit. See docs/deploy.md."""


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("print", "install"))
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="config the service reads (default /etc/stmwatch/config.toml)")
    parser.add_argument("--dest", default="/etc/systemd/system", metavar="DIR",
                        help="where install writes stmwatch.service (default /etc/systemd/system)")
    parser.add_argument("--no-config", action="store_true", help="install: do not write a config file")
    parser.add_argument("--watch", metavar="DIR", help="install: the scan folder the service watches")
    parser.add_argument("--db", metavar="URL", help="install: the database URL (with a password: a credential file)")
    parser.add_argument("--group", metavar="GROUP", help="install: a group that may read --watch DIR")
    parser.add_argument("--polling", action="store_true", default=None,
                        help="install: poll --watch DIR (default: when it is on a network share)")
    parser.add_argument("--force", action="store_true", help="install: replace an existing config")


def run(args) -> int:
    from stmwatch.daemon.service import (DEFAULT_CONFIG, HOME_PREFIXES, credential_path, install, installed_command,
                                         render_unit)

    config = str(Path(args.config or DEFAULT_CONFIG).expanduser().absolute())  # systemd takes absolute paths only
    command = installed_command()
    if command[0].startswith(HOME_PREFIXES):
        print(f"warning: {command[0]} is under a home directory; the service's dynamic user may not be able "
              "to read it. Install stmwatch system-wide (e.g. a venv in /opt/stmwatch) for the service.",
              file=sys.stderr)
    if args.action == "print":
        sys.stdout.write(render_unit(command, config, watch=args.watch, group=args.group,
                                     credential=credential_path(config, args.db)))
        return 0
    if args.watch and not Path(args.watch).is_dir():
        print(f"error: --watch {args.watch}: not a folder (mount the share first)", file=sys.stderr)
        return 1
    try:
        written = install(args.dest, config, write_config=not args.no_config, command=command, watch=args.watch,
                          database=args.db, group=args.group, polling=args.polling, force=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write the unit: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print("next: systemctl daemon-reload && systemctl enable --now stmwatch")
    return 0
