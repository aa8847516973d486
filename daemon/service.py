"""The systemd unit of stmwatch, rendered with the paths of this install (``stmwatch service``).

The unit runs ``stmwatch run`` as a ``Type=notify`` service (see ``notify.py``): systemd waits for
READY, restarts it when it fails or its watchdog pings stop, reloads it with SIGHUP and stops it
with SIGTERM (the daemon drains its queue, within ``TimeoutStopSec``). It runs as a dynamic user
on a read-only system; only ``/var/lib/stmwatch`` (database) and ``/var/cache/stmwatch`` (engine
cache) are writable, and the NVIDIA device nodes are the only devices. ``systemd/stmwatch.service``
in the repository is :func:`render_unit` with the default paths (a test keeps them equal).
"""
from __future__ import annotations

import json
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
# documentation: `stmwatch --help`, and README.md and docs/deploy.md of the stmwatch source
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

# Resource limits: a runaway (a scan or message too big for the caps) is throttled above
# MemoryHigh and killed above MemoryMax (then restarted), never the whole lab PC.
MemoryHigh=6G
MemoryMax=8G
MemorySwapMax=0
TasksMax=512

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
    """How to start this stmwatch: the console script of this interpreter's environment (beside
    ``sys.executable``, e.g. ``/opt/stmwatch/bin/stmwatch``), else the one on PATH when it runs
    this same interpreter, else ``python -m stmwatch.daemon``. (A ``stmwatch`` found first on
    PATH may belong to another install, e.g. a pyenv shim in a home directory.)"""
    beside = Path(sys.executable).parent / "stmwatch"
    if beside.is_file():
        return [str(beside.absolute())]
    exe = shutil.which("stmwatch")
    if exe and _runs_this_python(Path(exe)):
        return [str(Path(exe).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "stmwatch.daemon"]


def _runs_this_python(script: Path) -> bool:
    """True when the console script ``script`` starts this interpreter (its ``#!`` line)."""
    try:
        first = script.read_bytes()[:512].split(b"\n", 1)[0].decode(errors="replace")
    except OSError:
        return False
    return first.startswith("#!") and Path(first[2:].strip().split()[0]).resolve() == Path(sys.executable).resolve()


def render_unit(command: list[str] | None = None, config: str = DEFAULT_CONFIG, *,
                watch: str | None = None, group: str | None = None, credential: str | None = None) -> str:
    """The unit text for ``command`` (default: this install) reading ``config``.

    An install under a home directory (a virtual environment in ``~``) needs ``ProtectHome=read-only``
    instead of ``yes``, or the service could not see its own interpreter. ``watch``: the scan
    folder, named read-only (``ReadOnlyPaths=``; under ``/home`` it also needs
    ``ProtectHome=read-only``); ``group``: a group that may read it, given to the dynamic user
    (``SupplementaryGroups=``); ``credential``: a file holding the database URL, passed to the
    service as the systemd credential ``database-url`` (``LoadCredential=``; see ``dburl.py``).
    """
    command = command or installed_command()
    paths = [command[0], str(Path(sys.prefix).resolve())] if command != [DEFAULT_EXE] else [DEFAULT_EXE]
    if watch:
        paths.append(str(Path(watch).absolute()))
    in_home = any(p.startswith(HOME_PREFIXES) for p in paths)
    exec_start = " ".join(_quote(c) for c in [*command, "run", "--config", config])
    unit = HEADER + UNIT_TEMPLATE.format(exec_start=exec_start, protect_home="read-only" if in_home else "yes")
    extra = []
    if watch:
        extra.append(f"# the scan folder (an SMB/CIFS mount of the Nanonis PC's data folder): read, never written\n"
                     f"ReadOnlyPaths={_quote(str(Path(watch).absolute()))}")
    if group:
        extra.append(f"# the group that may read the scan folder (the mount's gid= or the folder's group)\n"
                     f"SupplementaryGroups={group}")
    if credential:
        extra.append(f"# the database URL (with its password) as a credential only this service can read\n"
                     f"LoadCredential=database-url:{credential}")
    if extra:
        unit = unit.replace("\n# Hardening:", "\n" + "\n".join(extra) + "\n\n# Hardening:", 1)
    return unit


def network_filesystem(path: str | Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the network file system ``path`` is on (``cifs``, ``smb3``, ``nfs``, ...), or
    None: inotify sees no changes made by another machine there, so the folder must be polled."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    target = str(Path(path).absolute())
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fstype
    return kind if kind in NETWORK_FILESYSTEMS or (kind or "").startswith("fuse.sshfs") else None


NETWORK_FILESYSTEMS = ("cifs", "smb3", "smbfs", "nfs", "nfs4", "9p", "fuse.sshfs", "davfs")


def service_config(watch: str | None = None, database: str | None = None, polling: bool = False,
                   credential: str | None = None) -> str:
    """The config the service starts from: :data:`SERVICE_CONFIG`, with the scan folder
    (``[folder] path``, ``polling``) and the database URL when given. A URL with a password is
    not written here but read from the credential file ``credential`` (a comment says so)."""
    from .dburl import mask_url

    text = SERVICE_CONFIG
    if database and credential:
        text = text.replace(f'database = "sqlite:///{STATE_DIR}/stmwatch.db"\n',
                            f"# database: {mask_url(database)}, read from the systemd credential database-url\n"
                            f"# ({credential}, mode 0600); it overrides any database key here\n")
    elif database:
        text = text.replace(f'database = "sqlite:///{STATE_DIR}/stmwatch.db"', f"database = {_toml(database)}")
    if watch:
        text += (f"\n[folder]\n# where the microscope's .sxm files appear (read only)\npath = {_toml(str(Path(watch).absolute()))}\n"
                 f"# true on a network share (SMB/CIFS, NFS): inotify does not see files another machine writes\n"
                 f"polling = {'true' if polling else 'false'}\n")
    return text


def _toml(text: str) -> str:
    """``text`` as a TOML basic string."""
    return json.dumps(text)  # a JSON string is a TOML basic string (escapes and quotes alike)


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(ch.isspace() for ch in arg) else arg


def credential_path(config: str, database: str | None) -> str | None:
    """Where install puts a database URL that holds a password (beside the config), else None."""
    from .dburl import CREDENTIAL, password_of

    return str(Path(config).parent / CREDENTIAL) if database and password_of(database) else None


def configured_folder(config: Path) -> str | None:
    """The scan folder an existing config watches (``[folder] path`` with the folder driver), for
    the unit's ``ReadOnlyPaths=``; None when it watches none or cannot be read."""
    from .config import ConfigError, load_config

    try:
        loaded = load_config(config)
    except (ConfigError, OSError, ValueError):
        return None
    return str(loaded.folder.path) if loaded.daemon.driver == "folder" and loaded.folder.path else None


def install(dest: str | Path = "/etc/systemd/system", config: str = DEFAULT_CONFIG,
            write_config: bool = True, command: list[str] | None = None, *, watch: str | None = None,
            database: str | None = None, group: str | None = None, polling: bool | None = None,
            force: bool = False) -> list[Path]:
    """Write ``stmwatch.service`` into ``dest`` (and the config, if it is missing or ``force``);
    start nothing. ``watch``/``database`` go into the config (:func:`service_config`; ``polling``
    None: on when ``watch`` is on a network file system); a database URL with a password goes into
    ``database-url`` beside the config (mode 0600), loaded as a systemd credential.

    Returns the files written. A config that exists is kept, unless ``force``; asking for
    ``watch`` or ``database`` then is a :class:`FileExistsError` (they would be silently lost).
    """
    cfg = Path(config)
    if cfg.exists() and write_config and not force and (watch or database):
        raise FileExistsError(f"{cfg} exists: edit it, or give --force to replace it with --watch/--db")
    credential = credential_path(config, database)
    if polling is None:
        polling = bool(watch and network_filesystem(watch))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    unit = dest / "stmwatch.service"
    unit_watch = watch or (configured_folder(cfg) if cfg.exists() and not force else None)
    unit.write_text(render_unit(command, config, watch=unit_watch, group=group, credential=credential))
    written = [unit]
    if write_config and (force or not cfg.exists()):
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(service_config(watch, database, polling, credential))
        written.append(cfg)
    if credential:
        path = Path(credential)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(database + "\n")
        written.append(path)
    return written


# ---- the daemon under systemd ------------------------------------------------------------------
def daemon_status(daemon) -> dict:
    """Counts for STATUS lines and the dashboard: done/ok/partial/failed/skipped, queued, driver."""
    pipeline = getattr(daemon, "pipeline", None)
    stats = getattr(pipeline, "stats", None)
    out = {k: int(getattr(stats, k, 0)) for k in ("submitted", "ok", "partial", "failed", "skipped")}
    out["done"] = out["ok"] + out["partial"] + out["failed"]
    out["queued"] = int(getattr(pipeline, "_busy", 0)) if pipeline is not None else 0
    out["store_error"] = getattr(pipeline, "store_error", None) if pipeline is not None else None
    out["dropped"] = int(getattr(getattr(daemon, "connection", None), "dropped", 0) or 0)  # stream messages
    out["driver"] = getattr(getattr(daemon, "config", None), "daemon", None) and daemon.config.daemon.driver
    segmenter = getattr(getattr(daemon, "analyser", None), "segmenter", None)
    backend = getattr(segmenter, "backend", None)
    backend_name = getattr(backend, "name", None) or (type(backend).__name__ if backend is not None else None)
    versions = getattr(getattr(daemon, "analyser", None), "model_versions", {}) or {}
    out["backend"] = " ".join(v for v in (versions.get("segmenter"), backend_name) if v) or None
    return out


def status_line(daemon) -> str:
    s = daemon_status(daemon)
    waiting = (f"database unavailable, {s['queued']} scan(s) pending, retrying: {s['store_error']}; "
               if s["store_error"] else "")
    return (f"{waiting}{s['done']} scans done ({s['ok']} ok, {s['partial']} partial, {s['failed']} failed), "
            f"{s['queued']} queued, driver {s['driver']}")


class LiveSide:
    """The live publisher, the live segmentation hook and the status heartbeat of a running daemon
    (``[live]``). An endpoint that cannot be bound is a :class:`ValueError`, as for ``[daemon]
    publish``: one rule, the daemon stops at start; a live analyser that cannot load is logged."""

    def __init__(self, daemon) -> None:
        import logging

        self.log = logging.getLogger("stmwatch.daemon.service")
        self.daemon = daemon
        self.publisher = None
        self.hook = None
        self._next_beat = 0.0
        settings = getattr(daemon.config, "live", None)
        self.settings = settings
        if settings is None:
            return
        if settings.publish:
            from .live import LivePublisher

            # ValueError naming the endpoint if taken, or open to the network without CURVE
            self.publisher = LivePublisher(settings.publish, security=getattr(daemon.config, "security", None))
            self.log.info("publishing live defects and status on %s", self.publisher.endpoint)
        self.attach()

    def attach(self) -> None:
        """(Re)create the live hook for the daemon's current analyser and pipeline."""
        from .live import LiveSegmenter

        self.detach()
        settings = self.daemon.config.live
        if not settings.enabled or self.daemon.analyser is None:
            return
        try:
            from .live import live_analyser

            analyser = live_analyser(self.daemon.config)
        except Exception as exc:
            self.log.warning("live segmentation off: cannot load a second analyser (%s)", exc)
            return
        self.hook = LiveSegmenter(analyser, settings, self.publisher)
        self.daemon.partial_hooks.append(self.hook)
        if self.daemon.pipeline is not None:
            self.daemon.pipeline.partial_hooks.append(self.hook)

    def detach(self) -> None:
        if self.hook is None:
            return
        for hooks in (self.daemon.partial_hooks, getattr(self.daemon.pipeline, "partial_hooks", [])):
            if self.hook in hooks:
                hooks.remove(self.hook)
        self.hook.close()
        self.hook = None

    def beat(self, now: float) -> None:
        """Publish the status heartbeat if its period has passed."""
        if self.publisher is None or now < self._next_beat:
            return
        self._next_beat = now + self.settings.heartbeat_s
        status = daemon_status(self.daemon)
        running = getattr(self.hook, "current", None)
        status["current"] = running.scan_id if running is not None and not running.finished else None
        try:
            self.publisher({"kind": "status", **status})
        except Exception as exc:
            self.log.debug("heartbeat not sent: %s", exc)

    def close(self) -> None:
        self.detach()
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None


def serve(daemon, load_config, notifier=None, tick_s: float = 0.5, stop_timeout_s: float = 80.0,
          dashboard: bool = False, live: LiveSide | None = None) -> int:
    """Run a started ``daemon`` under systemd's eyes until SIGTERM/SIGINT; the exit code.

    Sends READY (with a STATUS line) at once, WATCHDOG pings from this loop while the driver and
    pipeline threads live, a STATUS line when the counts change. SIGHUP reloads the config
    (``load_config()``; RELOADING=1 ... READY=1; a bad new config is logged and the old one kept).
    SIGTERM sends STOPPING=1, drains the queue and returns 0 (within ``stop_timeout_s``, below the
    unit's TimeoutStopSec). A driver that died returns 1, so that ``Restart=on-failure`` restarts.
    """
    import logging
    import signal
    import threading
    import time

    from .notify import Notifier

    log = logging.getLogger("stmwatch.daemon.service")
    notifier = notifier or Notifier(watchdog_s=daemon.config.daemon.watchdog_s)
    stop, reload = threading.Event(), threading.Event()
    handlers = {signal.SIGTERM: lambda *_: stop.set(), signal.SIGINT: lambda *_: stop.set(),
                signal.SIGHUP: lambda *_: reload.set()}
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    code = 0
    live = live or LiveSide(daemon)
    board = _start_dashboard(daemon) if dashboard else None
    try:
        last = status_line(daemon)
        notifier.ready(last)
        if notifier.watchdog_period_s:
            tick_s = min(tick_s, notifier.watchdog_period_s / 2)
        while not stop.wait(tick_s):
            if reload.is_set():
                reload.clear()
                notifier.reloading()
                old = daemon.config
                live.detach()
                with _keepalive(notifier):  # a reload drains the queue first: keep the watchdog fed
                    try:
                        daemon.reload(load_config())
                        log.info("config reloaded")
                        if daemon.config.daemon.log_level != old.daemon.log_level:  # as `stmwatch run` set it
                            logging.getLogger().setLevel(daemon.config.daemon.log_level.upper())
                    except Exception as exc:
                        log.error("reload failed, keeping the previous config: %s", exc)
                        if not daemon.running:
                            try:
                                daemon.reload(old)
                            except Exception as again:  # the old config no longer starts either
                                log.error("the previous config does not start again either (%s): exiting", again)
                                code = 1
                                break
                live.attach()
                notifier.ready(status_line(daemon))
            error = getattr(daemon, "driver_error", None)
            if error is not None or not daemon.running:
                notifier.status(f"driver stopped: {error}")
                log.error("the driver stopped (%s); exiting for a restart", error)
                code = 1
                break
            thread = getattr(getattr(daemon, "pipeline", None), "_thread", None)
            if thread is None or thread.is_alive():
                notifier.watchdog_due()
            live.beat(time.monotonic())
            line = status_line(daemon)
            if line != last:
                notifier.status(line)
                last = line
    except KeyboardInterrupt:
        pass
    finally:
        notifier.stopping(f"stopping: draining {daemon_status(daemon)['queued']} queued scan(s)")
        with _keepalive(notifier):  # TimeoutStopSec bounds the drain, not the watchdog
            daemon.stop(drain=True, timeout=stop_timeout_s)
        live.close()
        if board is not None:
            board[1].set()
            board[0].join(5)
        for sig, h in previous.items():
            signal.signal(sig, h)
        notifier.close()
    return code


def _start_dashboard(daemon):
    """``stmwatch run --dashboard``: the dashboard in this terminal, in a thread; log lines below
    WARNING are held back so they do not tear the screen."""
    import logging
    import threading

    from .dashboard import Dashboard, endpoints_of

    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    stop = threading.Event()
    board = Dashboard(daemon.config.daemon.database, endpoints_of(daemon.config), security=daemon.config.security)
    thread = threading.Thread(target=board.run, kwargs={"stop": stop}, name="stmwatch-dashboard", daemon=True)
    thread.start()
    return thread, stop


class _keepalive:
    """Ping the watchdog from a thread while the main loop is blocked (reload, drain)."""

    def __init__(self, notifier) -> None:
        import threading

        self.notifier = notifier
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stmwatch-watchdog", daemon=True)

    def _run(self) -> None:
        period = self.notifier.watchdog_period_s
        while not self.stop.wait(period / 2):
            self.notifier.watchdog()

    def __enter__(self):
        if self.notifier.watchdog_period_s:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
