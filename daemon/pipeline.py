"""The pipeline: acquisitions in, result documents out to every sink, in one direction.

    driver ─ Acquisition ─► [bounded queue] ─► worker: read → Analyser.analyse → ResultDocument ─► sinks

:meth:`Pipeline.submit` blocks while the queue is full (back-pressure on the driver). A scan
that fails -- unreadable, or the analysis raised -- becomes a ``failed`` document with the reason;
the worker goes on with the next. A sink that raises is logged and the other sinks still run.
Scans already known (``is_known(path, content_hash)``, the database) are skipped before reading,
so ingest is idempotent. ``store`` (the database) is not a sink like the others: a scan counts as
done only once stored. While the store (or ``is_known``) raises -- disk full, database server
gone -- the worker keeps the scan in hand and retries with backoff (``retry_s``: first and
longest wait); ``store_error`` says why meanwhile (logged once; the daemon's STATUS= line and
heartbeat carry it), the queue fills and the driver waits, so every scan is stored once the
database is back. A stop while it is down leaves the scan unstored (a folder scan is taken again
on the next start). :meth:`Pipeline.partial` hands running stream scans to ``partial_hooks``
(live segmentation hooks in there); they never reach the sinks.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import queue
import threading
import time
from typing import Callable, Protocol

import numpy as np

from stmwatch.models.analyse import Analyser

from stmwatch.drivers.base import Acquisition, PartialScan

from .documents import ResultDocument, new_uid, utcnow

log = logging.getLogger(__name__)


def local_aware(when: dt.datetime | None) -> dt.datetime | None:
    """A scan's acquisition time as an instant: a naive time (an ``.sxm`` header's, the microscope
    PC's clock) is taken in this host's time zone, the daemon running beside the microscope."""
    return when.astimezone() if when is not None and when.tzinfo is None else when


SURFACE_MAX_CHARS = 32  # the longest surface key (the database's scans.surface column)


def named_surface(surface: object, path: str) -> str | None:
    """The surface a source names for a scan (a stream header's ``surface``, whatever its sender
    wrote), or None -- then the configured one is recorded -- when it is not a surface key (a short
    text): the database could not store it, and the scans after it would wait behind it."""
    if surface is None or surface == "":
        return None
    if isinstance(surface, str) and len(surface) <= SURFACE_MAX_CHARS:
        return surface
    log.warning("%s: the source names the surface %.60r, not a surface key; recording the configured one",
                path, surface)
    return None


class Sink(Protocol):
    """Anything called with each result document; ``close()`` is optional."""

    def __call__(self, doc: ResultDocument) -> None: ...


def config_version(config) -> str:
    """First 12 hex digits of the sha256 of the effective config (its values, not its file name)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    values.pop("source", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclasses.dataclass
class PipelineStats:
    submitted: int = 0
    skipped: int = 0
    ok: int = 0
    partial: int = 0
    failed: int = 0
    store_retries: int = 0  # store / is_known calls that raised and were retried
    unstored: int = 0  # scans given up on at a stop while the database was unavailable


_STOP = object()


class NotStored(RuntimeError):
    """The database stayed unavailable until the pipeline was stopped."""


class Pipeline:
    """One worker thread between a bounded queue of acquisitions and the sinks.

    ``surface`` is recorded for scans whose source does not name one; ``config_version`` is
    recorded with every result.
    """

    def __init__(self, analyser: Analyser, sinks: list[Sink], *, surface: str | None, config_version: str,
                 queue_size: int = 8, is_known: Callable[[str, str], bool] | None = None,
                 partial_hooks: list[Callable[[PartialScan], None]] | None = None,
                 store: Sink | None = None, retry_s: tuple[float, float] = (1.0, 30.0)):
        self.analyser = analyser
        self.sinks = list(sinks)
        self.store = store
        self.retry_s = retry_s
        self.store_error: str | None = None  # why the database cannot be used now; None when it can
        self._halt = threading.Event()
        self.surface = surface
        self.config_version = config_version
        self.is_known = is_known
        self.partial_hooks = list(partial_hooks or [])
        self.stats = PipelineStats()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._busy = 0

    # ---- the driver's side -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="stmwatch-pipeline", daemon=True)
            self._thread.start()

    def submit(self, acq: Acquisition, timeout: float | None = None) -> bool:
        """Queue ``acq``; blocks while the queue is full. False if still full after ``timeout`` s."""
        with self._idle:
            self._busy += 1
        try:
            self._queue.put(acq, timeout=timeout)
        except queue.Full:
            with self._idle:
                self._busy -= 1
            return False
        self.stats.submitted += 1
        return True

    def partial(self, event: PartialScan) -> None:
        """A running scan got new lines: call every partial hook (errors logged)."""
        for hook in self.partial_hooks:
            try:
                hook(event)
            except Exception:
                log.exception("partial-scan hook %r failed", hook)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted has been through the sinks; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the worker: after the queued scans (``drain``), or after the scan in hand."""
        if self._thread is None:
            return
        self._halt.set()  # a scan waiting for the database is given up on, not waited for
        if not drain:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        self._halt.clear()

    # ---- the worker --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self.process(item)
            except Exception:  # process() records failures itself; this is a last resort
                log.exception("%s: unexpected error in the pipeline", item.path)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _retry(self, call: Callable[[], object], path: str):
        """``call()``, retried with backoff while it raises (the database is unavailable); the first
        failure is logged, and the recovery. :class:`NotStored` if the pipeline is stopped meanwhile."""
        delay = self.retry_s[0]
        while True:
            try:
                result = call()
            except Exception as exc:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                if self.store_error is None:
                    log.error("database unavailable (%s); %s and the scans after it stay pending, retried "
                              "every %g-%g s", reason, path, self.retry_s[0], self.retry_s[1])
                self.store_error = reason
                self.stats.store_retries += 1
                if self._halt.is_set():
                    raise NotStored(reason) from None
                self._halt.wait(delay)
                delay = min(2 * delay, self.retry_s[1])
                continue
            if self.store_error is not None:
                log.warning("database available again after %d retries; storing the pending scans",
                            self.stats.store_retries)
                self.store_error = None
            return result

    def process(self, acq: Acquisition) -> ResultDocument | None:
        """Read, analyse, store and hand ``acq`` to the sinks; the document, or None if already
        known (or not stored because the pipeline stopped while the database was unavailable)."""
        try:
            known = self.is_known is not None and self._retry(lambda: self.is_known(acq.path, acq.content_hash),
                                                              acq.path)
        except NotStored as exc:
            return self._not_stored(acq, exc)
        if known:
            log.info("%s: already in the database, skipped", acq.path)
            self.stats.skipped += 1
            return None
        t0 = time.perf_counter()
        scan, analysis, error = None, None, None
        try:
            scan = acq.read()
            if all(np.isnan(f).all() for f in scan.topography().frames()):
                raise ValueError("no data: every line of the topography is NaN")
        except Exception as exc:  # ScanReadError, or a stream scan without a line
            error = str(exc)
        read_ms = (time.perf_counter() - t0) * 1e3
        if scan is not None and error is None:
            try:
                analysis = self.analyser.analyse(scan, read_ms)
            except Exception as exc:
                log.exception("%s: analysis failed", acq.path)
                error = f"analysis failed: {type(exc).__name__}: {exc}"
        if error is not None:
            status = "failed"
            log.warning("%s: failed: %s", acq.path, error)
        else:
            status = "partial" if (scan.partial or not acq.complete) else "ok"
        try:
            doc = ResultDocument(
                uid=new_uid(), path=acq.path, content_hash=acq.content_hash, source=acq.source, status=status,
                error=error, surface=named_surface(acq.surface, acq.path) or self.surface,
                geometry=scan.geometry() if scan is not None else None,
                acquired=local_aware(scan.acquired) if scan is not None else None, received=acq.received,
                processed=utcnow(),
                defects=[d.as_dict() for d in analysis.defects] if analysis else [],
                counts=dict(analysis.counts) if analysis else {},
                timing_ms=dict(analysis.timing_ms) if analysis else {"read": round(read_ms, 2)},
                model_versions=dict(analysis.model_versions if analysis else self.analyser.model_versions),
                config_version=self.config_version, nan_rows=int(scan.nan_rows) if scan is not None else 0,
                warnings=list(analysis.warnings) if analysis else [], scan=scan)
        except Exception as exc:  # a result that cannot be described is still recorded, as failed
            log.exception("%s: cannot build its result", acq.path)
            status, error = "failed", f"result not recordable: {type(exc).__name__}: {exc}"
            doc = ResultDocument(
                uid=new_uid(), path=acq.path, content_hash=acq.content_hash, source=acq.source, status=status,
                error=error, surface=named_surface(acq.surface, acq.path) or self.surface, geometry=None,
                acquired=None,
                received=acq.received, processed=utcnow(), defects=[], counts={}, timing_ms={},
                model_versions=dict(self.analyser.model_versions), config_version=self.config_version,
                nan_rows=0, warnings=[], scan=None)
        if self.store is not None:
            try:
                self._retry(lambda: self.store(doc), acq.path)
            except NotStored as exc:
                return self._not_stored(acq, exc)
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        if status != "failed":
            log.info("%s: %s, %d defect(s) %s in %.0f ms", acq.path, status, len(doc.defects), doc.counts,
                     doc.timing_ms.get("total", 0.0))
            for warning in doc.warnings:
                log.warning("%s: %s", acq.path, warning)
        for sink in self.sinks:
            try:
                sink(doc)
            except Exception:
                log.exception("%s: sink %r failed", acq.path, sink)
        return doc

    def _not_stored(self, acq: Acquisition, exc: Exception) -> None:
        self.stats.unstored += 1
        log.error("%s: not stored, the database is unavailable (%s); a file is taken again on the next start",
                  acq.path, exc)
        return None
