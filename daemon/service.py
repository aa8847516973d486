"""The systemd unit of stmwatch, rendered with the paths of this install (``stmwatch service``).

The unit runs ``stmwatch run`` as a ``Type=notify`` service (see ``notify.py``): systemd waits for
READY, restarts it when it fails or its watchdog pings stop, reloads it with SIGHUP and stops it
with SIGTERM (the daemon drains its queue, within ``TimeoutStopSec``). It runs as a dynamic user
on a read-only system; only ``/var/lib/stmwatch`` (database) and ``/var/cache/stmwatch`` (engine
cache) are writable, and the NVIDIA device nodes are the only devices. ``systemd/stmwatch.service``
in the repository is :func:`render_unit` with the default paths (a test keeps them equal).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

DEFAULT_EXE = "/usr/local/bin/stmwatch"
DEFAULT_CONFIG = "/etc/stmwatch/config.toml"
STATE_DIR = "/var/lib/stmwatch"
CACHE_DIR = "/var/cache/stmwatch"
HOME_PREFIXES = ("/home/", "/root/", "/run/user/")

HEADER = """\
# stmwatch: live defect analysis beside a scanning tunnelling microscope.
# `stmwatch service print` shows this unit with the paths of the installed stmwatch;
# `stmwatch service install` writes it to /etc/systemd/system (nothing is started).
# Config: /etc/stmwatch/config.toml (ConfigurationDirectory). Results: /var/lib/stmwatch
# (StateDirectory: the SQLite database). Engine cache: /var/cache/stmwatch (CacheDirectory).
# These two are the only writable paths.
"""

UNIT_TEMPLATE = """\
[Unit]
Description=stmwatch live STM defect analysis
Documentation=file:///usr/share/doc/stmwatch/README.md
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=60
Restart=on-failure
RestartSec=5
TimeoutStartSec=300
TimeoutStopSec=90
KillMode=mixed

DynamicUser=yes
StateDirectory=stmwatch
CacheDirectory=stmwatch
ConfigurationDirectory=stmwatch
WorkingDirectory=/var/lib/stmwatch
Environment=HOME=/var/lib/stmwatch XDG_CACHE_HOME=/var/cache PYTHONUNBUFFERED=1
UMask=0077

# Hardening: read-only system, no home, no privileges, only the GPU among devices.
ProtectSystem=strict
ReadWritePaths=/var/lib/stmwatch /var/cache/stmwatch
ProtectHome={protect_home}
PrivateTmp=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
PrivateUsers=yes
DevicePolicy=closed
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps rw
DeviceAllow=/dev/nvidiactl rw
DeviceAllow=/dev/nvidia-uvm rw
DeviceAllow=/dev/nvidia-uvm-tools rw
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources @mount @swap @reboot @raw-io @obsolete @debug @cpu-emulation @clock @module
SystemCallErrorNumber=EPERM
# PyTorch/oneDNN and the CUDA driver generate code at run time: W^X would break them.
MemoryDenyWriteExecute=no

[Install]
WantedBy=multi-user.target
"""

# The config the installed service starts from when /etc/stmwatch/config.toml does not exist yet.
SERVICE_CONFIG = f"""\
# stmwatch service config (written by `stmwatch service install`; edit, then `systemctl reload stmwatch`).
[daemon]
driver = "folder"
database = "sqlite:///{STATE_DIR}/stmwatch.db"

[models]
engine_cache = "{CACHE_DIR}/engines"
"""


def installed_command() -> list[str]:
    """How to start this stmwatch: its console script, else ``python -m stmwatch.daemon``."""
    exe = shutil.which("stmwatch")
    if exe:
        return [str(Path(exe).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "stmwatch.daemon"]


def render_unit(command: list[str] | None = None, config: str = DEFAULT_CONFIG) -> str:
    """The unit text for ``command`` (default: this install) reading ``config``.

    An install under a home directory (a virtual environment in ``~``) needs ``ProtectHome=read-only``
    instead of ``yes``, or the service could not see its own interpreter.
    """
    command = command or installed_command()
    paths = [command[0], str(Path(sys.prefix).resolve())] if command != [DEFAULT_EXE] else [DEFAULT_EXE]
    in_home = any(p.startswith(HOME_PREFIXES) for p in paths)
    exec_start = " ".join(_quote(c) for c in [*command, "run", "--config", config])
    return HEADER + UNIT_TEMPLATE.format(exec_start=exec_start, protect_home="read-only" if in_home else "yes")


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(ch.isspace() for ch in arg) else arg


def install(dest: str | Path = "/etc/systemd/system", config: str = DEFAULT_CONFIG,
            write_config: bool = True, command: list[str] | None = None) -> list[Path]:
    """Write ``stmwatch.service`` into ``dest`` (and the config, if it is missing); start nothing.

    Returns the files written.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    unit = dest / "stmwatch.service"
    unit.write_text(render_unit(command, config))
    written = [unit]
    cfg = Path(config)
    if write_config and not cfg.exists():
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(SERVICE_CONFIG)
        written.append(cfg)
    return written
