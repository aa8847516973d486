"""``stmwatch run``: the daemon -- driver → pipeline → database + overlay publisher, until stopped."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

HELP = "run the daemon: watch a folder or a stream, analyse each scan, store and publish defects"
DESCRIPTION = """Run the daemon until Ctrl-C or SIGTERM (it finishes the scans already queued); SIGHUP
reloads the config file.

Settings come from --config (config.toml; every key is documented there); the flags below override
it. A wrong key or value in the config, a missing folder, an unusable database URL or a taken
publish endpoint stop it at start with a message naming the problem (exit code 2)."""


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="FILE", help="config.toml (default: built-in defaults)")
    parser.add_argument("--watch", metavar="DIR", help="watch this folder (sets [daemon] driver = folder)")
    parser.add_argument("--stream", metavar="ENDPOINT", help="take scans from this ZeroMQ endpoint "
                        "(sets [daemon] driver = stream)")
    parser.add_argument("--db", metavar="URL", help="SQLAlchemy database URL, e.g. sqlite:///stmwatch.db")
    parser.add_argument("--publish", metavar="ENDPOINT", help="ZeroMQ PUB endpoint for overlays ('' = off)")
    parser.add_argument("--dashboard", action="store_true", help="show the live dashboard in this terminal")


def effective_config(args):
    """The config file (or defaults) with the command-line overrides applied, checked."""
    from stmwatch.daemon.config import load_config

    config = load_config(getattr(args, "config", None))
    if getattr(args, "watch", None) and getattr(args, "stream", None):
        from stmwatch.daemon.config import ConfigError

        raise ConfigError("give --watch or --stream, not both")
    if getattr(args, "watch", None):
        config.daemon = dataclasses.replace(config.daemon, driver="folder")
        # absolute: each scan's row carries its path, which must still name the file elsewhere
        config.folder = dataclasses.replace(config.folder, path=str(Path(args.watch).expanduser().absolute()))
    if getattr(args, "stream", None):
        config.daemon = dataclasses.replace(config.daemon, driver="stream")
        config.stream = dataclasses.replace(config.stream, endpoint=args.stream)
    if getattr(args, "db", None):
        config.daemon = dataclasses.replace(config.daemon, database=args.db)
    if getattr(args, "publish", None) is not None:
        config.daemon = dataclasses.replace(config.daemon, publish=args.publish)
    config.check()
    return config


def run(args) -> int:
    import logging

    from stmwatch.daemon.config import ConfigError
    from stmwatch.daemon.daemon import Daemon
    from stmwatch.daemon.db import DatabaseError
    from stmwatch.daemon.dburl import mask_url, mask_logs

    try:
        config = effective_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from stmwatch.daemon.ports import port_problems

    problems = port_problems(config)  # before the models load: which port, which setting
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if not getattr(args, "verbose", 0):
        logging.getLogger().setLevel(config.daemon.log_level.upper())
    mask_logs(config.daemon.database)  # whatever a library logs, the password is not in it
    daemon = Daemon(config)
    try:
        daemon.start()
    except (ConfigError, DatabaseError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from stmwatch.daemon.service import LiveSide, serve  # systemd: READY, WATCHDOG, STATUS, SIGHUP reload, SIGTERM drain

    try:
        live = LiveSide(daemon)  # [live] publish: a taken endpoint stops the start, as [daemon] publish does
    except ValueError as exc:
        daemon.stop(drain=False)
        print(f"error: [live] publish: {exc}", file=sys.stderr)
        return 2
    from stmwatch.daemon.daemon import scan_source

    source = scan_source(config)
    print(f"stmwatch: {config.daemon.driver} {source} -> {mask_url(config.daemon.database)}"
          + (f", overlays on {daemon.publisher.endpoint}" if daemon.publisher else ""), flush=True)
    return serve(daemon, lambda: effective_config(args), dashboard=getattr(args, "dashboard", False), live=live)
