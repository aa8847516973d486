"""The daemon: one driver feeding the pipeline, whose sinks are the database and the publisher.

    daemon = Daemon(config)          # analyser = load_analyser(config) unless given
    daemon.start()                   # opens db, publisher, driver; raises at once if any is wrong
    ...                              # scans flow: driver thread → pipeline worker → sinks
    daemon.stop(drain=True)          # finish what is queued, close everything

Extension points: ``sinks`` (extra sinks after the database and publisher, e.g. a dashboard),
``partial_hooks`` (called with each :class:`~stmwatch.drivers.base.PartialScan` of a stream
driver, for live segmentation), :meth:`reload` (a new config: stop, drain, start again), and
``on_state`` (called with "starting", "ready", "stopping", "stopped": systemd notify hooks here).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from stmwatch.drivers.base import PartialScan
from stmwatch.models.analyse import Analyser

from .config import Config, ConfigError
from .db import Database, DatabaseError, lease_owner
from .pipeline import Pipeline, Sink, config_version
from .publisher import OverlayPublisher

log = logging.getLogger(__name__)

RESTART_S = 2.0  # wait before reopening a driver that failed
MAX_RESTARTS = 5  # failures in a row after which the driver thread gives up (driver_error set)


def open_driver(config: Config):
    """The connection (a context manager, not entered) of ``[daemon] driver``."""
    driver = config.daemon.driver
    if driver == "folder":
        from stmwatch.drivers.folder.connection import FolderConnection

        path = Path(config.folder.path).expanduser()
        if not path.is_dir():
            raise ConfigError(f"folder.path {str(path)!r} is not a folder (set [folder] path or --watch)")
        return FolderConnection(config.folder)
    if driver == "stream":
        from stmwatch.drivers.stream.connection import StreamConnection

        return StreamConnection(config.stream, security=config.security)
    if driver == "nanonis":
        try:
            from stmwatch.drivers.nanonis.connection import NanonisConnection
        except ImportError as exc:
            raise ConfigError(f"the nanonis driver is not available: {exc}") from None
        return NanonisConnection(config.nanonis)
    raise ConfigError(f"unknown driver {driver!r}")


def scan_source(config: Config) -> str:
    """Where the configured driver takes its scans: the folder (absolute), the stream endpoint or
    the Nanonis controller's address."""
    driver = config.daemon.driver
    if driver == "folder":
        return str(Path(config.folder.path).expanduser().resolve())
    if driver == "stream":
        return config.stream.endpoint
    return f"{config.nanonis.host}:{config.nanonis.port}"


def lease_source(config: Config) -> str:
    """The scan source a daemon's database lease covers, as this host names it (driver and
    :func:`scan_source`): two daemons on one source would analyse every scan twice, while the
    daemons of several microscopes write into one database (docs/deploy.md)."""
    return f"{socket.gethostname()} {config.daemon.driver} {scan_source(config)}"


class Daemon:
    """Runs one driver → pipeline → sinks until :meth:`stop`; see the module docstring."""

    def __init__(self, config: Config, *, analyser: Analyser | None = None, sinks: list[Sink] | None = None,
                 partial_hooks: list[Callable[[PartialScan], None]] | None = None,
                 on_state: Callable[[str], None] | None = None):
        self.config = config
        self.analyser = analyser
        self.extra_sinks = list(sinks or [])
        self.partial_hooks = list(partial_hooks or [])
        self.on_state = on_state
        self.db: Database | None = None
        self.publisher: OverlayPublisher | None = None
        self.pipeline: Pipeline | None = None
        self.connection = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.driver_error: BaseException | None = None  # set when the driver thread gave up
        self._owner = lease_owner()  # this daemon, as the holder of the database's lease
        self._lease_thread: threading.Thread | None = None
        self._lease_source = ""  # the scan source the lease was taken on (lease_source)
        self.last_driver_error: BaseException | None = None

    def _state(self, state: str) -> None:
        log.info("daemon %s", state)
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("on_state hook failed")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open everything (errors raise here, before any scan is taken) and start the threads."""
        self._state("starting")
        config = self.config
        config.check()
        opened: list = []
        connection = open_driver(config)  # checks the driver's settings (e.g. the folder exists)
        try:
            self.db = Database(config.daemon.database)
            opened.append(self.db)
            self.db.check_writable()  # a read-only or full database stops the start, with the reason
            self._lease_source = lease_source(config)
            self.db.take_lease(self._owner, config.daemon.lease_s, self._lease_source)  # one daemon per source
            if self.analyser is None:
                from stmwatch.models.load import make_analyser

                self.analyser = make_analyser(config.daemon.analyser, config)
            sinks: list[Sink] = []
            if config.daemon.publish:
                try:
                    self.publisher = OverlayPublisher(config.daemon.publish, png=config.daemon.publish_png,
                                                      security=config.security)
                except ValueError as exc:
                    raise ValueError(f"[daemon] publish: {exc}") from None
                opened.append(self.publisher)
                sinks.append(self.publisher)
            sinks.extend(self.extra_sinks)
            self.pipeline = Pipeline(
                self.analyser, sinks, surface=config.models.surface, config_version=config_version(config),
                queue_size=config.daemon.queue_size, is_known=self.db.seen, partial_hooks=self.partial_hooks,
                store=self.db.record)
            self.connection = connection.__enter__()
        except BaseException:
            for thing in reversed(opened):
                with contextlib.suppress(Exception):
                    thing.close()
            self.db = self.publisher = self.pipeline = None
            raise
        log.info("config %s, models %s", config_version(config), self.analyser.model_versions)
        self.pipeline.start()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._drive, name="stmwatch-driver", daemon=True)
        self._thread.start()
        self._lease_thread = threading.Thread(target=self._renew_lease, args=(self.db,), name="stmwatch-lease",
                                              daemon=True)
        self._lease_thread.start()
        self._state("ready")

    def _renew_lease(self, db: Database) -> None:
        """Renew the database lease every third of ``lease_s`` until stopped (failures logged once)."""
        period, failing = self.config.daemon.lease_s / 3, False
        while not self._stopping.wait(period):
            try:
                db.take_lease(self._owner, self.config.daemon.lease_s, self._lease_source)
                failing = False
            except DatabaseError as exc:
                if not failing:
                    log.error("%s", exc)
                failing = True

    def _drive(self) -> None:
        """The driver thread: events from the connection into the pipeline (blocking when full).

        A driver that raises is logged, closed and opened again after ``RESTART_S`` seconds; after
        ``MAX_RESTARTS`` failures in a row the thread ends with ``driver_error`` set (a service
        manager then restarts the daemon). ``last_driver_error`` keeps the latest failure."""
        pipeline = self.pipeline
        failures = 0
        while not self._stopping.is_set():
            try:
                if self.connection is None:
                    self.connection = open_driver(self.config).__enter__()
                    log.info("driver reopened")
                event = self.connection.wait_for_acquisition(timeout=0.2)
                failures = 0
                if event is None:
                    continue
                if isinstance(event, PartialScan):
                    pipeline.partial(event)
                    continue
                while not pipeline.submit(event, timeout=0.5):
                    if self._stopping.is_set():
                        log.info("%s: not queued before stop; it will be taken again on start", event.path)
                        return
            except Exception as exc:
                failures += 1
                self.last_driver_error = exc
                with contextlib.suppress(Exception):
                    if self.connection is not None:
                        self.connection.__exit__(None, None, None)
                self.connection = None
                if failures > MAX_RESTARTS:
                    log.exception("driver failed %d times in a row; giving up", failures)
                    self.driver_error = exc
                    return
                if isinstance(exc, OSError):  # a named condition (a share gone, a folder made again): its words suffice
                    log.warning("driver failed (%s); reopening it in %g s", exc, RESTART_S)
                else:  # anything else is a defect: its traceback
                    log.exception("driver failed; reopening it in %g s", RESTART_S)
                self._stopping.wait(RESTART_S)

    def stop(self, drain: bool = True, timeout: float | None = 60.0) -> None:
        """Stop taking scans; finish the queued ones (``drain``) or only the one in hand; close all."""
        if self.pipeline is None:
            return
        self._state("stopping")
        self._stopping.set()
        for thread in (self._thread, self._lease_thread):
            if thread is not None:
                thread.join(timeout)
        self._thread = self._lease_thread = None
        with contextlib.suppress(Exception):
            if self.connection is not None:
                self.connection.__exit__(None, None, None)
        self.connection = None
        self.pipeline.stop(drain=drain, timeout=timeout)
        if self.db is not None:
            self.db.release_lease(self._owner, self._lease_source)
        for thing in (self.publisher, self.db):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self.pipeline = self.publisher = self.db = None
        self._state("stopped")

    def reload(self, config: Config) -> None:
        """Carry on with ``config``: drain and stop, then start again (models reloaded if they changed)."""
        config.check()
        models_changed = (dataclasses.asdict(config.models) != dataclasses.asdict(self.config.models)
                          or config.preprocess != self.config.preprocess
                          or config.daemon.analyser != self.config.daemon.analyser
                          or bundle_changed(config, self.analyser))
        new_analyser = None
        if models_changed and self.analyser is not None:
            # Load the new models before stopping anything: a bad bundle or missing weights raise
            # here, and the daemon carries on with the models it has.
            from stmwatch.models.load import make_analyser

            new_analyser = make_analyser(config.daemon.analyser, config)
        self.stop(drain=True)
        if models_changed:
            self.analyser = new_analyser
        self.config = config
        self.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every scan submitted so far went through the sinks (tests, the demo)."""
        return self.pipeline.wait_idle(timeout) if self.pipeline else True

    def wait_until_idle(self, timeout: float, poll_s: float = 0.1) -> bool:
        """Wait until the driver has nothing pending (no file still being written, no open stream
        scan) and every scan it handed on went through the sinks; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while getattr(self.connection, "pending", 0) and time.monotonic() < deadline:
            time.sleep(poll_s)
        return self.wait_idle(max(0.0, deadline - time.monotonic())) and not getattr(self.connection, "pending", 0)

    def __enter__(self) -> "Daemon":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(drain=True)


def bundle_changed(config: Config, analyser) -> bool:
    """True when ``[models] bundle`` names a bundle whose files changed since ``analyser`` was
    built from it (the same path, rewritten by ``stmwatch adapt``); a bundle that cannot be read
    counts as changed, so that loading it reports why."""
    if not config.models.bundle or analyser is None:
        return False
    from stmwatch.models.bundle import BundleError, load_bundle

    try:
        return load_bundle(config.models.bundle).id != getattr(analyser, "bundle", None)
    except BundleError:
        return True
