"""The watched-folder driver: a watchdog observer on the folder the microscope writes into.

    with FolderConnection(settings) as conn:
        while True:
            acq = conn.wait_for_acquisition(timeout=1.0)  # None on timeout
            if acq is not None:
                pipeline.submit(acq)

On entering, files already in the folder are queued first (the backlog, oldest first); the
pipeline skips those already in the database by content hash. Use ``polling = true`` on SMB/NFS
shares, where inotify does not see writes made by another machine. A file whose real path (symlinks
resolved) is outside the folder is left alone with one warning unless ``follow_symlinks``. A
watched folder that disappears or is replaced (a share unmounted and mounted again, the folder
deleted and made again) can no longer be watched: ``wait_for_acquisition`` raises, and the daemon
opens the driver again (its backlog then takes the files written meanwhile).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from stmwatch.drivers.base import Acquisition

from .acquisition import FileTracker, existing_files, inside, matches
from .settings import FolderSettings

log = logging.getLogger(__name__)

TICK_S = 0.1  # how often candidates are re-checked while waiting (s)


class _Handler(FileSystemEventHandler):
    def __init__(self, connection: "FolderConnection"):
        self.connection = connection

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type in ("deleted", "moved") \
                and os.path.normpath(os.fsdecode(event.src_path)) == os.path.normpath(self.connection.root):
            self.connection._root_lost = True  # the watched folder itself went (its watch with it)
            self.connection._wake.set()
        if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
            return
        path = getattr(event, "dest_path", "") or event.src_path
        self.connection._notice(path)


class FolderConnection:
    """Watches ``settings.path`` (or ``path``); :meth:`wait_for_acquisition` yields complete files."""

    def __init__(self, settings: FolderSettings, path: str | Path | None = None):
        self.settings = settings
        self.root = Path(path if path is not None else settings.path).expanduser()
        self.tracker = FileTracker(settings.stable_s, accept=self._allowed)
        self._wake = threading.Event()
        self._observer = None
        self._refused: set[str] = set()  # paths outside the folder already warned about (bounded)
        self._root_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder being watched
        self._root_lost = False  # set by the observer when the watched folder itself is deleted or moved

    def _allowed(self, path) -> bool:
        """False (with one warning per path) for a path leading outside the folder through a symlink."""
        if self.settings.follow_symlinks or inside(self.root, path):
            return True
        key = os.fspath(path)
        if key not in self._refused:
            if len(self._refused) > 10_000:
                self._refused.clear()
            self._refused.add(key)
            log.warning("%s: a symlink to %s, outside the watched folder; not taken ([folder] follow_symlinks)",
                        key, os.path.realpath(key))
        return False

    def _notice(self, path) -> None:
        if matches(path, self.settings.patterns) and self._allowed(path):
            self.tracker.touch(path)
            self._wake.set()

    def __enter__(self) -> "FolderConnection":
        if not self.root.is_dir():
            raise FileNotFoundError(f"watched folder {self.root} does not exist")
        observer = (PollingObserver(timeout=self.settings.poll_interval_s) if self.settings.polling
                    else Observer())
        st = self.root.stat()
        self._root_id = (st.st_dev, st.st_ino)
        observer.schedule(_Handler(self), str(self.root), recursive=self.settings.recursive)
        observer.start()  # before the backlog listing, so no file falls between the two
        self._observer = observer
        if self.settings.backlog:
            backlog = existing_files(self.root, self.settings.patterns, self.settings.recursive)
            backlog = [p for p in backlog if self._allowed(p)]
            for p in backlog:
                self.tracker.touch(p)
            log.info("watching %s (%s); %d file(s) already there", self.root,
                     "polling" if self.settings.polling else "inotify", len(backlog))
        return self

    def __exit__(self, *exc) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    @property
    def pending(self) -> int:
        """Files seen but not yet taken (still being written, or waiting to be stable)."""
        return self.tracker.pending

    def _check_root(self) -> None:
        """Raise :class:`FileNotFoundError` when the watched folder is gone or is another folder now
        (its observer then sees nothing more: the driver must be opened again)."""
        if self._observer is None:  # not entered: nothing is watched
            return
        try:
            st = os.stat(self.root)
            same = (st.st_dev, st.st_ino) == self._root_id
        except OSError:
            same = False
        watching = all(e.is_alive() for e in self._observer.emitters)
        if self._root_lost or not same or not watching:
            raise FileNotFoundError(f"watched folder {self.root} disappeared or was replaced "
                                    "(unmounted, deleted or made again); it must be watched afresh")

    def wait_for_acquisition(self, timeout: float) -> Acquisition | None:
        """The next complete (or stable) file, read; ``None`` when none is ready within ``timeout`` s.

        Raises :class:`FileNotFoundError` when the watched folder disappeared or was replaced."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_root()
            self._wake.clear()
            for path, complete in self.tracker.ready():
                acq = self.tracker.take(path, complete)
                if acq is not None:
                    return acq
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._wake.wait(min(TICK_S, left))
