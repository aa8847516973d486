"""Defects while the scan is still running: segment the lines received so far, publish each defect
as soon as every line it covers has arrived.

For a streamed scan (ZeroMQ ``lines``, or the Nanonis driver's progress), the daemon's driver
thread hands every :class:`~stmwatch.drivers.base.PartialScan` to :class:`LiveSegmenter`
(a ``partial_hooks`` entry). The hook only notes the newest state; a worker thread segments
whenever ``every_lines`` new lines have come in since its last pass (it skips states it could not
keep up with, so it never falls behind the microscope).

One pass segments a *band*: the newest lines plus ``context_nm`` of lines above them (below,
for an ``up`` scan) -- the segmenter sees the band as a small :class:`Scan` with the same pixel
size, angle and scanner coordinates. A defect found in the band is *complete* when its extent
(centroid ± the radius of a disc of its area) ends at least ``guard_lines`` lines before the
last line received, and the pass before found it at the same place (within ``stable_px``, area
within ``stable_area``): new lines below it changed nothing. That second condition rejects what only the
band's edges create (such artefacts move with the newest line). Complete defects not published
yet (none within ``match_nm``) are published at once, each with an ``id``. When the last line
of the frame arrives, everything found is complete.

The UNet runs each band untiled, in one backend call per flip (``[live] flips``, 1 by default:
a pass is then a few lines' worth of work; the whole frame at ``scan_end`` and in the pipeline
keeps ``[models] test_time_flips``), on ONNX Runtime, whose export takes any height and width. A
backend built for one input shape (TensorRT) runs band passes on square tiles just taller than
the band instead, or on its own tiles. Where the delay comes from, and the figures of ``stmwatch
bench stream``: ``docs/performance.md``.

Messages, on the live PUB endpoint (``[live] publish``), multipart ``[b"live", JSON]``, each with
``"version"``: :data:`LIVE_VERSION` (raised when a message's fields change meaning):

``{"kind": "defects", "scan_id", "name", "rows", "rows_done", "direction", "defects": [...],
"n_defects"}``
    newly complete defects (``Defect.as_dict()`` + ``id``; ``x_m``/``y_m`` scanner frame).
``{"kind": "progress", "scan_id", "name", "rows", "rows_done", "n_defects"}``
    after a pass that found nothing new.
``{"kind": "scan_end", "scan_id", ..., "defects", "retracted", "confirmed", "n_defects"}``
    the frame's last line arrived: the whole frame segmented once more, the final defect list
    (each keeps the ``id`` of the live defect it confirms), the live ids it does not confirm.
``{"kind": "status", ...}``
    the daemon's heartbeat (``service.serve``): counts, queue, driver, backend.

The definitive result of a scan is still the pipeline's whole-frame analysis (its overlay).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from typing import Callable

import numpy as np

from stmwatch.drivers.scan import Channel, Scan

log = logging.getLogger(__name__)

TOPIC = b"live"


LIVE_VERSION = 1  # the live messages' schema (a consumer checks it, as the overlay's "version")


@dataclasses.dataclass
class LiveSettings:
    """Live segmentation of streamed scans (``[live]`` in config.toml)."""

    enabled: bool = True  # segment running scans and publish their defects as they complete
    publish: str = "tcp://127.0.0.1:5558"  # ZeroMQ PUB endpoint for live defects and the heartbeat ("" = off)
    every_lines: int = 1  # segment once this many new lines have arrived (at most; never falls behind)
    context_nm: float = 4.0  # lines above the new ones the segmenter sees (nm of scan height)
    guard_lines: int = 0  # lines that must follow a defect's last line before it can be complete
    stable_px: float = 0.25  # ... and one more pass must find it within this many pixels
    stable_area: float = 0.2  # ... with an area within this fraction (docs/performance.md, "Live stream with 671d60e6ce61")
    match_nm: float = 0.4  # a detection this close to a published defect is the same defect
    heartbeat_s: float = 1.0  # status heartbeat period (s)
    flips: int = 1  # test-time flips of a band pass (1, 2 or 4); scan_end and the pipeline use [models]

    def check(self) -> None:
        if self.every_lines < 1 or self.guard_lines < 0:
            raise ValueError("every_lines must be at least 1 and guard_lines at least 0")
        if self.flips not in (1, 2, 4):
            raise ValueError(f"flips must be 1, 2 or 4, not {self.flips}")
        if self.context_nm <= 0 or self.match_nm <= 0 or self.heartbeat_s <= 0 or self.stable_px <= 0:
            raise ValueError("context_nm, match_nm and heartbeat_s must be positive")
        if self.publish:
            from stmwatch.drivers.wire import check_endpoint

            check_endpoint(self.publish, bind=True, what="publish")


class LivePublisher:
    """A PUB socket for ``[b"live", JSON]`` messages; thread-safe (one lock around the socket)."""

    def __init__(self, endpoint: str, context=None, security=None):
        import zmq

        from .publisher import bind_publisher

        self._own = context is None
        self._context = context or zmq.Context()
        self._auth = None
        try:
            self._socket, self._auth = bind_publisher(self._context, endpoint, linger_ms=200, security=security,
                                                      what="[live] publish")
        except ValueError as exc:
            self._socket = None
            self.close()
            raise ValueError(f"live defects: {exc}") from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()

    def __call__(self, message: dict) -> None:
        data = json.dumps({"version": LIVE_VERSION, **message}).encode()
        with self._lock:
            if self._socket is not None:
                self._socket.send_multipart([TOPIC, data])

    def close(self) -> None:
        from .publisher import close_publisher

        with getattr(self, "_lock", threading.Lock()):
            if getattr(self, "_socket", None) is not None or getattr(self, "_auth", None) is not None:
                close_publisher(self._socket, self._auth)
                self._socket = self._auth = None
        if self._own and self._context is not None:
            self._context.term()
            self._context = None


def live_analyser(config):
    """The analyser live segmentation runs: a second one beside the pipeline's (segmenters keep
    per-call state, TensorRT contexts are per thread). With ``[models] backend = "auto"`` on a
    machine without a CUDA GPU, the UNet runs on ONNX Runtime int8 (``onnxruntime-int8``: the
    fastest CPU backend; held-out F1 within 0.002 of fp32 except where a double tip's near-tie
    copy choice flips, see models/weights/MODEL_CARD.md; quantized once, about 30 s, at the first
    start, then cached): its export takes any height and width, so a band is one untiled input.
    Falls back to fp32 ONNX Runtime, then torch, where those cannot run. A named backend is used
    as named."""
    from stmwatch.models.load import load_analyser, make_analyser

    if config.daemon.analyser == "standin":
        return make_analyser(config.daemon.analyser, config)
    import torch

    from stmwatch.models.backends import BackendUnavailable

    backend = config.models.backend
    choices = ["onnxruntime-int8", "onnxruntime"] if backend == "auto" and not torch.cuda.is_available() else [backend]
    for choice in choices:
        try:
            return load_analyser(config, backend=choice)
        except BackendUnavailable as exc:
            log.info("live segmentation: %s cannot run (%s)", choice, exc)
    return load_analyser(config, backend="torch")


# ---- one band -------------------------------------------------------------------------------------
def band_scan(scan: Scan, lo: int, hi: int) -> Scan:
    """Display rows ``lo .. hi-1`` of ``scan`` as a :class:`Scan` of their own: same pixel size,
    angle and direction, offset at the band's centre, so its pixels map to the same scanner
    positions as the rows of ``scan`` they came from (``row_in_band = row - lo``)."""
    nx, ny = scan.pixels
    cx, cy = scan.pixel_to_scanner((lo + hi - 1) / 2, (nx - 1) / 2)
    channels = [Channel(name=c.name, unit=c.unit, index=c.index, calibration=c.calibration, offset=c.offset,
                        forward=None if c.forward is None else c.forward[lo:hi],
                        backward=None if c.backward is None else c.backward[lo:hi]) for c in scan.channels]
    return Scan(channels=channels, pixels=(nx, hi - lo), range_m=(scan.range_m[0], scan.range_m[1] * (hi - lo) / ny),
                offset_m=(float(cx), float(cy)), angle_deg=scan.angle_deg, direction=scan.direction,
                bias_v=scan.bias_v, acquired=scan.acquired, source=scan.source, header=scan.header)


def radius_px(area_px: float) -> float:
    """The radius (pixels) of a disc of ``area_px`` pixels."""
    return math.sqrt(max(area_px, 1.0) / math.pi)


@dataclasses.dataclass
class _Running:
    scan_id: str
    rows: int
    rows_done: int = 0  # lines at the last pass
    published: list[dict] = dataclasses.field(default_factory=list)
    previous: list = dataclasses.field(default_factory=list)  # the last pass's detections
    finished: bool = False


class LiveSegmenter:
    """The live hook (see the module docstring): ``hook(partial_scan)`` from the driver thread.

    ``segmenter`` is a :class:`~stmwatch.models.analyse.Segmenter` (or an ``Analyser``: its
    segmenter, and its classifier names the live defects); ``publish`` gets each message
    dict. ``threaded=False`` runs each pass inside the hook call (tests, benchmarks that feed
    lines themselves). ``on_publish(defect_dict, rows_done, t)`` is told about every defect
    published (the benchmark measures delays with it).
    """

    def __init__(self, segmenter, settings: LiveSettings | None = None,
                 publish: Callable[[dict], None] | None = None, *, threaded: bool = True,
                 on_publish: Callable[[dict, int, float], None] | None = None, classifier=None):
        if hasattr(segmenter, "segmenter"):  # an Analyser: its segmenter and classifier
            segmenter, classifier = segmenter.segmenter, classifier or segmenter.classifier
        self.segmenter = segmenter
        self.classifier = classifier
        self.settings = settings or LiveSettings()
        self.publish = publish or (lambda message: None)
        self.on_publish = on_publish
        self.threaded = threaded
        self.current: _Running | None = None
        self.passes = 0
        self.pass_ms: list[float] = []
        self._cond = threading.Condition()
        self._pending = None
        self._stop = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="stmwatch-live", daemon=True)
            self._thread.start()

    # ---- driver thread ----------------------------------------------------------------------------
    def __call__(self, event) -> None:
        """Take a :class:`~stmwatch.drivers.base.PartialScan` (keeps only the newest)."""
        if not self.threaded:
            self.step(event.scan_id, event.scan, event.rows_done)
            return
        with self._cond:
            self._pending = (event.scan_id, event.scan, event.rows_done)
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the newest state has been processed (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    _busy = False
    _band_tiles = True  # False once the segmenter refused a band-sized tile

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stop)
                if self._stop:
                    return
                pending, self._pending = self._pending, None
                self._busy = True
            try:
                self.step(*pending)
            except Exception:
                log.exception("live segmentation of %s failed", pending[0])
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # ---- one pass --------------------------------------------------------------------------------
    def step(self, scan_id: str, scan: Scan, rows_done: int) -> list[dict]:
        """Process the running ``scan`` with ``rows_done`` lines in; the defects newly published."""
        ny = scan.shape[0]
        run = self.current
        if run is None or run.scan_id != scan_id:
            run = self.current = _Running(scan_id, ny)
        if run.finished or rows_done <= run.rows_done:
            return []
        last = rows_done >= ny
        if not last and rows_done - run.rows_done < self.settings.every_lines:
            return []
        new_lines = rows_done - run.rows_done
        t0 = time.perf_counter()
        detections = self._band_defects(scan, rows_done, new_lines, last)
        fresh_defects = []
        match_px = self.settings.match_nm * 1e-9 / scan.pixel_size_m[0]
        stable, stable_area = self.settings.stable_px, self.settings.stable_area
        for d, complete in detections:
            if not complete:
                continue
            if not last and not any(abs(d.row - p.row) <= stable and abs(d.col - p.col) <= stable
                                    and abs(d.area_px / max(p.area_px, 1e-9) - 1) <= stable_area
                                    for p in run.previous):
                continue  # not seen unchanged in the pass before: still growing, or a band-edge artefact
            if any(math.hypot(d.row - p["y_px"], d.col - p["x_px"]) <= match_px for p in run.published):
                continue
            fresh_defects.append(d)
        self._classify(fresh_defects, scan.bias_v)
        fresh = []
        for d in fresh_defects:
            item = {**d.as_dict(), "id": len(run.published)}
            run.published.append(item)
            fresh.append(item)
        run.previous = [d for d, _ in detections]
        run.rows_done = rows_done
        self.passes += 1
        self.pass_ms.append((time.perf_counter() - t0) * 1e3)
        base = {"scan_id": scan_id, "name": scan.name if scan.source else str(scan_id), "rows": ny,
                "rows_done": rows_done, "direction": scan.direction}
        if fresh:
            now = time.monotonic()
            self.publish({"kind": "defects", **base, "n_defects": len(run.published), "defects": fresh})
            if self.on_publish is not None:
                for item in fresh:
                    self.on_publish(item, rows_done, now)
        elif not last:
            self.publish({"kind": "progress", **base, "n_defects": len(run.published)})
        if last:
            run.finished = True
            self.publish({"kind": "scan_end", **base, **self.reconcile(scan, run)})
        return fresh

    def _classify(self, defects: list, bias_v: float | None) -> None:
        if self.classifier is None:
            return
        with_crops = [d for d in defects if d.crop is not None]
        if with_crops:
            labels = self.classifier.classify(np.stack([d.crop for d in with_crops]), bias_v=bias_v)
            for d, (label, score) in zip(with_crops, labels):
                d.label, d.label_score = label, float(score)

    def reconcile(self, scan: Scan, run: _Running) -> dict:
        """The frame is complete: segment it whole, as the pipeline will, and say how the defects
        published live map onto that result: ``defects`` (the whole-frame list, each with the
        ``id`` of the live defect it confirms, or a new id), ``retracted`` (live ids it does not
        confirm), ``confirmed`` (how many live defects it confirms)."""
        whole = self.segmenter.segment(scan)
        self._classify(whole, scan.bias_v)
        match_px = self.settings.match_nm * 1e-9 / scan.pixel_size_m[0]
        free = {p["id"]: p for p in run.published}
        final, confirmed = [], 0
        next_id = len(run.published)
        for d in sorted(whole, key=lambda d: (d.row, d.col)):
            best = min(free.values(), key=lambda p: math.hypot(d.row - p["y_px"], d.col - p["x_px"]), default=None)
            if best is not None and math.hypot(d.row - best["y_px"], d.col - best["x_px"]) <= match_px:
                del free[best["id"]]
                final.append({**d.as_dict(), "id": best["id"]})
                confirmed += 1
            else:
                final.append({**d.as_dict(), "id": next_id})
                next_id += 1
        return {"n_defects": len(final), "defects": final, "retracted": sorted(free), "confirmed": confirmed}

    _band_untiled = True  # False once the segmenter's backend refused a band-shaped input

    def _band_probability(self, seg, prepared) -> np.ndarray:
        """``(h, w)`` probability of a prepared band in one backend call per flip, untiled: the band
        padded with zeros (the normalised median) to multiples of the UNet's down-sampling, as
        :func:`~stmwatch.models.unet.flip_averaged_predict` flips and pads a tile."""
        from stmwatch.models.unet import FLIPS

        image = prepared.image
        _, h, w = image.shape
        multiple = getattr(getattr(seg, "model", None), "multiple", 8)
        pad = ((0, 0), (0, -h % multiple), (0, -w % multiple))
        total = np.zeros((h, w), dtype=np.float32)
        for flip_rows, flip_cols in FLIPS[self.settings.flips]:
            axes = tuple(axis for axis, flip in ((1, flip_rows), (2, flip_cols)) if flip)
            x = np.pad(np.flip(image, axes) if axes else image, pad)
            prob = np.asarray(seg.backend(np.ascontiguousarray(x[None], dtype=np.float32)))[0, :h, :w]
            total += np.flip(prob, tuple(a - 1 for a in axes)) if axes else prob
        return np.where(prepared.valid, total / len(FLIPS[self.settings.flips]), 0.0).astype(np.float32)

    def _segment_band_untiled(self, seg, band: Scan):
        """A UNet segmenter's steps on a band, its probability from :meth:`_band_probability`."""
        from stmwatch.models.preprocess import prepare

        if not seg.resolves(band):
            return []
        prepared = prepare(band, seg.surface, seg.preprocess)
        return seg.defects_from(band, prepared, self._band_probability(seg, prepared))

    def _segment_band(self, band: Scan):
        """Segment a band. A UNet segmenter (``backend``, ``defects_from``) runs it untiled, with
        ``[live] flips`` (:meth:`_band_probability`; one pass costs a few lines' worth of the
        whole frame). Otherwise, a tiled segmenter (``tile_px``, ``tile_overlap_px``, ``surface``) gets
        tiles just taller than the band for it: a square tile of the whole-frame size would be
        mostly zero padding below the newest line (same network, a quarter of the work)."""
        seg = self.segmenter
        if self._band_untiled and all(hasattr(seg, a) for a in ("backend", "defects_from", "resolves", "preprocess")):
            try:
                return self._segment_band_untiled(seg, band)
            except Exception as exc:  # a backend built for one input shape (TensorRT)
                log.info("live: the segmenter's backend takes no band-shaped input (%s); band passes are tiled",
                         str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
                self._band_untiled = False
        full = getattr(seg, "tile_px", None)
        surface = getattr(seg, "surface", None)
        if not full or not hasattr(surface, "nm_per_px") or not self._band_tiles:
            return seg.segment(band)
        overlap = int(getattr(seg, "tile_overlap_px", 0))
        model_rows = band.shape[0] * band.pixel_size_m[1] * 1e9 / surface.nm_per_px
        tile = int(min(full, max(2 * overlap + 16, 16 * math.ceil((model_rows + overlap / 2) / 16))))
        seg.tile_px = tile
        try:
            return seg.segment(band)
        except Exception as exc:  # a backend built for one input shape (an ONNX/TensorRT export)
            log.info("live: the segmenter takes only %d px tiles (%s); band passes use them", full,
                     str(exc).splitlines()[0][:120])
            self._band_tiles = False
        finally:
            seg.tile_px = full
        return seg.segment(band)

    def _band_defects(self, scan: Scan, rows_done: int, new_lines: int, last: bool):
        """Segment the band of the newest lines: ``(defect in full-scan pixels, complete)`` for each
        defect not cut by the band's old edge."""
        ny = scan.shape[0]
        s = self.settings
        pixel_nm = scan.pixel_size_m[1] * 1e9
        context = int(math.ceil(s.context_nm / pixel_nm))
        height = min(rows_done, context + new_lines + s.guard_lines + 1)
        down = scan.direction == "down"
        if down:
            hi = rows_done
            lo = hi - height
        else:
            lo = ny - rows_done
            hi = lo + height
        if hi - lo < 4:
            return []
        defects = self._segment_band(band_scan(scan, lo, hi))
        out = []
        for d in defects:
            r = radius_px(d.area_px)
            row = d.row + lo
            top, bottom = row - r + 0.5, row + r - 0.5  # the first and last line it covers
            if down:
                complete = last or bottom + s.guard_lines <= hi - 1
                cut = lo > 0 and top < lo + 1  # runs out of the band's first line: seen before
            else:
                complete = last or top - s.guard_lines >= lo
                cut = hi < ny and bottom > hi - 2
            if not cut:
                d.row = row
                x, y = scan.pixel_to_scanner(row, d.col)
                d.x_m, d.y_m = float(x), float(y)
                out.append((d, complete))
        return out
