"""``stmwatch keys generate DIR``: ZeroMQ CURVE key pairs for the daemon and its clients."""
from __future__ import annotations

import sys

HELP = "make ZeroMQ CURVE keys for the overlay, live and stream sockets ([security])"
DESCRIPTION = """generate DIR writes two key pairs as zmq.auth certificate files:
  DIR/server.key, DIR/server.key_secret   the daemon's ([security] secret_key = DIR/server.key_secret)
  DIR/client.key, DIR/client.key_secret   a client's (list DIR/client.key in [security] allowed_clients)
Give clients the server's public key and their own secret key:
  stmwatch listen --server-key DIR/server.key --client-key DIR/client.key_secret
--name NAME makes only a client pair NAME.key / NAME.key_secret (one per client machine).
Secret key files are readable by their owner only; existing files are not overwritten."""


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="write key pairs into DIR")
    gen.add_argument("dir", metavar="DIR")
    gen.add_argument("--name", help="write one client pair NAME.key/NAME.key_secret instead")


def generate(directory, names: list[str]) -> list:
    """Write a key pair per name into ``directory`` (created 0700); the files written. FileExistsError
    if one is there already."""
    import os
    from pathlib import Path

    import zmq.auth

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in names:
        for suffix in (".key", ".key_secret"):
            if (directory / f"{name}{suffix}").exists():
                raise FileExistsError(f"{directory / (name + suffix)} exists; not overwritten")
    written = []
    old = os.umask(0o077)
    try:
        for name in names:
            public, secret = zmq.auth.create_certificates(str(directory), name)
            os.chmod(secret, 0o600)
            written += [Path(public), Path(secret)]
    finally:
        os.umask(old)
    return written


def run(args) -> int:
    try:
        written = generate(args.dir, [args.name] if args.name else ["server", "client"])
    except (OSError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
