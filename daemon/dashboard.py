"""The terminal dashboard: what the daemon is doing, readable at a glance on the lab PC.

It reads the database (the daemon's SQLAlchemy schema, ``daemon/db.py``) and listens to the
daemon's ZeroMQ publishers -- the overlay publisher (one message per processed scan) and the live
publisher (``daemon/live.py``: a status heartbeat with the queue depth and backend, and the
progress and defects of a scan still being acquired). Nothing ties it to the daemon's process:
it runs in a second terminal or over ssh, and it survives the daemon restarting (ZeroMQ
reconnects; a database that cannot be read is shown as such and retried at the next refresh).

Panels: the scan being processed (name, surface, progress of a streamed scan), queue depth and
backend; totals with throughput and latency (median, p95); the last scans with their status and
defect counts per label; defects per scan over time (a sparkline); errors; and, where the
terminal shows colour, a thumbnail of the last scan in half-block characters with its defects.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .dburl import mask_secret, mask_url

log = logging.getLogger(__name__)

SPARK = "▁▂▃▄▅▆▇█"
STATUS_STYLE = {"ok": "green", "partial": "yellow", "failed": "bold red"}
DAEMON_SILENT_S = 10.0  # no heartbeat for this long: the daemon is shown as not answering


# ---- what the database says ---------------------------------------------------------------------
@dataclasses.dataclass
class ScanSummary:
    id: int
    path: str
    surface: str | None
    status: str
    error: str | None
    n_defects: int
    counts: dict[str, int]
    received: dt.datetime | None
    processed: dt.datetime | None
    total_ms: float | None
    segmenter: str | None
    defects: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)  # (row, col, label)
    positions: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)  # scanner (x, y) nm, label
    warnings: list[str] = dataclasses.field(default_factory=list)  # what the operator should know

    @property
    def warned(self) -> bool:
        """Analysed (not failed) with something the operator should know."""
        return bool(self.warnings) and self.status != "failed"

    @property
    def name(self) -> str:
        return self.path.replace("\\", "/").rsplit("/", 1)[-1]


@dataclasses.dataclass
class Snapshot:
    """The database's view: totals, the last scans (newest first) and the recent history."""

    totals: dict[str, int] = dataclasses.field(default_factory=dict)  # ok, partial, failed, defects
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # defects per label, all scans
    scans: list[ScanSummary] = dataclasses.field(default_factory=list)  # newest first
    history: list[int] = dataclasses.field(default_factory=list)  # defects per scan, oldest first
    analysis_ms: list[float] = dataclasses.field(default_factory=list)  # analysis time, recent scans
    latency_s: list[float] = dataclasses.field(default_factory=list)  # received → processed
    throughput_per_min: float | None = None
    errors: list[ScanSummary] = dataclasses.field(default_factory=list)  # recent failed scans
    error: str | None = None  # the database could not be read


def read_snapshot(engine, recent: int = 10, history: int = 60) -> Snapshot:
    """Read a :class:`Snapshot` from the database behind ``engine`` (errors → ``Snapshot.error``)."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from .db import DefectRow, ScanRow

    snap = Snapshot()
    try:
        with Session(engine) as s:
            by_status = dict(s.execute(select(ScanRow.status, func.count()).group_by(ScanRow.status)).all())
            snap.labels = dict(s.execute(select(DefectRow.label, func.count()).group_by(DefectRow.label)
                                         .order_by(func.count().desc(), DefectRow.label)).all())
            snap.totals = {k: int(by_status.get(k, 0)) for k in ("ok", "partial", "failed")}
            snap.totals["defects"] = int(sum(snap.labels.values()))
            rows = list(s.scalars(select(ScanRow).order_by(ScanRow.id.desc()).limit(max(recent, history))))
            ids = [r.id for r in rows[:recent]]
            counts: dict[int, dict[str, int]] = {i: {} for i in ids}
            for scan_id, label, n in s.execute(
                    select(DefectRow.scan_id, DefectRow.label, func.count()).where(DefectRow.scan_id.in_(ids))
                    .group_by(DefectRow.scan_id, DefectRow.label)):
                counts[scan_id][label] = int(n)
            last_defects, last_positions = [], []
            if rows:
                found = list(s.scalars(select(DefectRow).where(DefectRow.scan_id == rows[0].id).order_by(DefectRow.id)))
                last_defects = [(d.y_px, d.x_px, d.label) for d in found]
                last_positions = [(d.x_m * 1e9, d.y_m * 1e9, d.label) for d in found]
            failed = list(s.scalars(select(ScanRow).where(ScanRow.status == "failed")
                                    .order_by(ScanRow.id.desc()).limit(3)))
    except Exception as exc:  # a database being created, locked, or gone: show it, try again later
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return Snapshot(error=mask_secret(message, engine.url.render_as_string(hide_password=False)))

    def summary(r, with_counts=None) -> ScanSummary:
        timing = r.timing_ms or {}
        return ScanSummary(
            id=r.id, path=r.path, surface=r.surface, status=r.status, error=r.error, n_defects=r.n_defects,
            counts=dict(sorted((with_counts or {}).items())), received=r.received, processed=r.processed,
            total_ms=timing.get("total"), segmenter=(r.model_versions or {}).get("segmenter"),
            warnings=list(r.warnings or []))

    snap.scans = [summary(r, counts.get(r.id)) for r in rows[:recent]]
    if snap.scans:
        snap.scans[0].defects, snap.scans[0].positions = last_defects, last_positions
    hist = list(reversed(rows[:history]))
    snap.history = [r.n_defects for r in hist if r.status != "failed"]
    snap.analysis_ms = [float(r.timing_ms["total"]) for r in hist
                        if r.status != "failed" and (r.timing_ms or {}).get("total") is not None]
    snap.latency_s = [(r.processed - r.received).total_seconds() for r in hist if r.processed and r.received]
    stamps = [r.processed for r in hist if r.processed]
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        snap.throughput_per_min = (len(stamps) - 1) / (stamps[-1] - stamps[0]).total_seconds() * 60
    snap.errors = [summary(r) for r in failed]
    return snap


# ---- what the publishers say --------------------------------------------------------------------
@dataclasses.dataclass
class LiveState:
    """What the daemon's publishers said lately (all optional: the dashboard works without)."""

    status: dict | None = None  # the last heartbeat: queue, done, driver, backend, current
    status_at: float | None = None  # time.monotonic() of that heartbeat
    progress: dict | None = None  # a scan being acquired: scan_id, name, rows_done, rows, defects
    progress_at: float | None = None  # time.monotonic() of the last progress
    last_overlay: dict | None = None
    overlay_png: bytes | None = None

    def daemon_seen(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.status_at is not None and now - self.status_at < DAEMON_SILENT_S

    def update(self, frames: list[bytes]) -> None:
        """Take one published message (``[b"overlay", json, png?]`` or ``[b"live", json]``)."""
        topic = bytes(frames[0])
        try:
            message = json.loads(bytes(frames[1]))
        except (IndexError, ValueError):
            return
        if topic == b"overlay":
            self.last_overlay = message
            self.overlay_png = bytes(frames[2]) if len(frames) > 2 and frames[2] else None
            if self.progress and self.progress.get("scan_id") and message.get("file", "").endswith(
                    str(self.progress.get("scan_id"))):
                self.progress = None
        elif topic == b"live":
            kind = message.get("kind")
            if kind == "status":
                self.status, self.status_at = message, time.monotonic()
            elif kind in ("progress", "defects"):
                self.progress = {**(self.progress or {}), **message} if (
                    self.progress and self.progress.get("scan_id") == message.get("scan_id")) else message
                self.progress_at = time.monotonic()
            elif kind == "scan_end":
                self.progress = None


class Feed:
    """SUB sockets on the daemon's overlay and live endpoints; :meth:`poll` drains them."""

    def __init__(self, endpoints: list[str], security=None):
        import zmq

        from stmwatch.drivers.wire import client_socket

        self._zmq = zmq
        self.context = zmq.Context()
        self.sockets = []
        for endpoint in [e for e in endpoints if e]:
            try:  # [security] curve: a CURVE client with client_secret_key
                sock = client_socket(self.context, zmq.SUB, security)
            except ValueError as exc:
                log.warning("not subscribing to %s: %s", endpoint, exc)
                continue
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 200)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            for topic in (b"overlay", b"live"):
                sock.setsockopt(zmq.SUBSCRIBE, topic)
            sock.connect(_connectable(endpoint))
            self.sockets.append(sock)

    def poll(self, state: LiveState, timeout_s: float = 0.0, limit: int = 1000) -> int:
        """Apply every waiting message to ``state`` (waiting up to ``timeout_s`` for the first)."""
        zmq = self._zmq
        n = 0
        if not self.sockets:
            time.sleep(timeout_s)
            return 0
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        ready = dict(poller.poll(int(timeout_s * 1000)))
        for sock in self.sockets:
            if sock not in ready:
                continue
            while n < limit:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                state.update(frames)
                n += 1
        return n

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)
        self.context.term()


def _connectable(endpoint: str) -> str:
    """A bind address (``tcp://*:5556``, ``tcp://0.0.0.0:5556``) as one a client can connect to."""
    return endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


# ---- drawing ---------------------------------------------------------------------------------------
def sparkline(values: list[float], width: int = 60) -> str:
    """``values`` (the last ``width``) as block characters, scaled from 0 to their maximum."""
    values = list(values)[-width:]
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(round(v / top * (len(SPARK) - 1))))] for v in values)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f} s" if v >= 10_000 else f"{v:.0f} ms"


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min")


def _ago(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "-"
    s = (now - when).total_seconds()
    if s < 60:
        return f"{max(0, s):.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    return when.strftime("%m-%d %H:%M")


def _counts_text(counts: dict[str, int]) -> str:
    return "  ".join(f"{label} {n}" for label, n in counts.items()) or "-"


def thumbnail(image: np.ndarray, defects: list[tuple[float, float, str]], width: int = 32) -> Text:
    """An image as half-block characters (``▀``: top pixel in the foreground colour, bottom in the
    background), ``width`` characters wide, one line per two pixel rows. ``image`` is heights
    ``(rows, cols)`` (drawn afmhot) or RGB ``(rows, cols, 3)``; defects (display-frame
    ``(row, col, label)`` of ``image``) in their label colours."""
    from stmwatch.models.render import label_colours, to_rgb

    rows, cols = image.shape[:2]
    height = max(2, int(round(width * rows / cols)))
    height += height % 2
    # area-average down to (height, width) pixels (per colour channel for an RGB image)
    r_edges = np.linspace(0, rows, height + 1).astype(int)
    c_edges = np.linspace(0, cols, width + 1).astype(int)
    small = np.full((height, width) + image.shape[2:], np.nan)
    for i in range(height):
        for j in range(width):
            block = image[r_edges[i]:max(r_edges[i + 1], r_edges[i] + 1), c_edges[j]:max(c_edges[j + 1], c_edges[j] + 1)]
            finite = np.isfinite(block)
            if finite.any():
                small[i, j] = np.nanmean(block.reshape(-1, *image.shape[2:]), axis=0)
    rgb = to_rgb(small, colormap="afmhot").astype(int) if image.ndim == 2 else small.astype(int)
    colours = label_colours(label for _, _, label in defects)
    for row, col, label in defects:
        i = min(height - 1, max(0, int(row / rows * height)))
        j = min(width - 1, max(0, int(col / cols * width)))
        rgb[i, j] = colours[label]
    text = Text()
    for i in range(0, height, 2):
        for j in range(width):
            top, bottom = rgb[i, j], rgb[i + 1, j]
            text.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
        if i + 2 < height:
            text.append("\n")
    return text


def scan_image(scan_path: str, png: bytes | None = None) -> np.ndarray | None:
    """The image of the last scan: its ``.sxm`` if it is on this machine, else the overlay's PNG
    (``publish_png``) as RGB, else None."""
    if png:
        try:
            import io

            from PIL import Image

            return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
        except Exception as exc:
            log.debug("overlay PNG unreadable: %s", exc)
    path = Path(scan_path)
    if path.suffix.lower() == ".sxm" and path.is_file():
        try:
            from stmwatch.drivers.sxm import read_sxm
            from stmwatch.models.render import viewing_image

            return viewing_image(read_sxm(path))
        except Exception as exc:
            log.debug("no thumbnail for %s: %s", scan_path, exc)
    return None


@dataclasses.dataclass
class View:
    """Where the data comes from, for the header line."""

    database: str = ""
    endpoints: tuple[str, ...] = ()
    thumbnails: bool = True


def render(snap: Snapshot, live: LiveState | None = None, view: View | None = None,
           now: dt.datetime | None = None, image: np.ndarray | None = None, colour: bool = True) -> RenderableType:
    """The whole dashboard as one rich renderable (pure: the same inputs draw the same screen)."""
    live = live or LiveState()
    view = view or View()
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    status = live.status if live.daemon_seen() else None

    # -- header
    head = Text()
    head.append(" stmwatch ", style="bold black on cyan")
    head.append(f"  {view.database}  ", style="dim")
    if status:
        head.append("daemon up", style="bold green")
        head.append(f"  driver {status.get('driver', '?')}  backend {status.get('backend') or '-'}")
    elif live.status_at is not None:
        head.append("daemon not answering (restarting?)", style="bold yellow")
    else:
        head.append("no daemon heartbeat", style="yellow")
    if snap.error:
        head.append(f"  database: {snap.error}", style="bold red")
    tip = double_tip_alert(snap)
    if tip:  # the tip needs conditioning before the next scan: shown above everything else
        detail = tip[len("double tip"):].lstrip(" :")
        head = Text.assemble(head, "\n", (f" DOUBLE TIP on the last scan: {detail} ", "bold white on red"))
    if status and status.get("store_error"):
        head.append(f"  daemon cannot store ({status.get('queued', '?')} scan(s) pending, retrying): "
                    f"{status['store_error']}", style="bold red")

    # -- now: current scan, queue, backend
    now_table = Table.grid(padding=(0, 1))
    now_table.add_column(style="bold", no_wrap=True)
    now_table.add_column()
    progress = live.progress
    if live.progress_at is not None and time.monotonic() - live.progress_at > 3 * DAEMON_SILENT_S:
        progress = None  # no line for long: the scan was stopped, or its end was missed
    if progress and progress.get("rows"):
        done, rows = int(progress.get("rows_done", 0)), int(progress["rows"])
        now_table.add_row("acquiring", Text(f"{progress.get('name') or progress.get('scan_id')}", style="bold"))
        now_table.add_row("", ProgressBar(total=rows, completed=done, width=30))
        now_table.add_row("", f"{done}/{rows} lines, {int(progress.get('n_defects', 0))} defects so far")
    elif (status or {}).get("current"):
        now_table.add_row("acquiring", Text(str(status["current"]), style="bold"))
    else:
        now_table.add_row("acquiring", Text("nothing streamed now", style="dim"))
    last = snap.scans[0] if snap.scans else None
    backend = (status or {}).get("backend") or (last.segmenter if last else None)
    now_table.add_row("queue", str((status or {}).get("queued", "-")))
    now_table.add_row("backend", backend or "-")
    if last:
        now_table.add_row("last scan", Text.assemble((last.name, "bold"), f"  {last.surface or '-'}  ",
                                                     (last.status, STATUS_STYLE.get(last.status, "")),
                                                     f"  {_ago(last.processed, now)}"))

    # -- totals
    totals = Table.grid(padding=(0, 1))
    totals.add_column(style="bold", no_wrap=True)
    totals.add_column()
    t = snap.totals
    totals.add_row("scans", Text.assemble((f"{t.get('ok', 0)} ok", "green"), "  ",
                                          (f"{t.get('partial', 0)} partial", "yellow"), "  ",
                                          (f"{t.get('failed', 0)} failed", "red" if t.get("failed") else "")))
    totals.add_row("defects", f"{t.get('defects', 0)}   " + _counts_text(snap.labels))
    thr = snap.throughput_per_min
    totals.add_row("throughput", "-" if thr is None else f"{thr:.1f} scans/min")
    totals.add_row("analysis", f"median {_fmt_ms(percentile(snap.analysis_ms, 50))}   "
                               f"p95 {_fmt_ms(percentile(snap.analysis_ms, 95))}")
    totals.add_row("latency", f"median {_fmt_s(percentile(snap.latency_s, 50))}   "
                              f"p95 {_fmt_s(percentile(snap.latency_s, 95))}  (received → stored)")

    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(Panel(now_table, title="now", box=box.ROUNDED), Panel(totals, title="totals", box=box.ROUNDED))

    # -- last scans
    scans = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    scans.add_column("when", no_wrap=True, style="dim")
    scans.add_column("scan", no_wrap=True, max_width=34, overflow="ellipsis")
    scans.add_column("surface", no_wrap=True)
    scans.add_column("status", no_wrap=True)
    scans.add_column("defects", justify="right")
    scans.add_column("by label", overflow="ellipsis", no_wrap=True, ratio=1)
    scans.add_column("analysis", justify="right", no_wrap=True)
    for s in snap.scans:
        by_label = Text(s.error or "", style="red") if s.status == "failed" else Text(_counts_text(s.counts))
        if s.warned:
            by_label = Text.assemble(("⚠ ", "bold yellow"), by_label)
        scans.add_row(_ago(s.processed, now), s.name, s.surface or "-",
                      Text(s.status, style=STATUS_STYLE.get(s.status, "")),
                      "-" if s.status == "failed" else str(s.n_defects), by_label, _fmt_ms(s.total_ms))
    if not snap.scans:
        scans.add_row("", Text("no scans yet", style="dim"), "", "", "", "", "")

    # -- history, thumbnail, errors
    hist = Text(sparkline(snap.history) or "no scans yet", style="cyan")
    if snap.history:
        hist.append(f"\n{len(snap.history)} scans, max {max(snap.history)} defects/scan, "
                    f"last {snap.history[-1]}", style="dim")
    lower = Table.grid(expand=True, padding=(0, 1))
    lower.add_column(ratio=3)
    lower.add_column(ratio=2)
    errors = Text()
    for e in snap.errors:
        errors.append(f"{_ago(e.processed, now)} {e.name}: ", style="bold")
        errors.append(f"{e.error}\n", style="red")
    for w in [s for s in snap.scans if s.warned][:3]:
        errors.append(f"{_ago(w.processed, now)} {w.name}: ", style="bold")
        errors.append("; ".join(w.warnings) + "\n", style="yellow")
    errors.rstrip()
    left = Group(Panel(hist, title="defects per scan", box=box.ROUNDED),
                 Panel(errors if errors.plain else Text("none", style="dim"), title="errors and warnings",
                       box=box.ROUNDED))
    parts: list[RenderableType] = []
    if image is not None and colour and view.thumbnails and last is not None:
        parts.append(Panel(thumbnail(image, last.defects), title=f"last scan: {last.name}", box=box.ROUNDED))
    if last is not None and last.positions:
        parts.append(Panel(positions_table(last.positions), title=f"{last.name}: defects at (nm, scanner frame)",
                           box=box.ROUNDED))
    lower.add_row(left, Group(*parts) if parts else Text(""))
    return Group(head, top, Panel(scans, title="last scans", box=box.ROUNDED), lower)


MAX_POSITIONS = 12  # defect positions listed for the last scan


def positions_table(positions: list[tuple[float, float, str]]) -> Table:
    """The last scan's defects, numbered as stored (as ``process`` and the overlay PNG number
    them), with scanner-frame x, y in nm; the first :data:`MAX_POSITIONS`."""
    table = Table(box=None, pad_edge=False, padding=(0, 1))
    for name in ("#", "label", "x nm", "y nm"):
        table.add_column(name, justify="left" if name == "label" else "right", no_wrap=True)
    for i, (x, y, label) in enumerate(positions[:MAX_POSITIONS]):
        table.add_row(str(i), label, f"{x:.2f}", f"{y:.2f}")
    if len(positions) > MAX_POSITIONS:
        table.add_row("", Text(f"{len(positions) - MAX_POSITIONS} more: stmwatch query defects", style="dim"), "", "")
    return table


def double_tip_alert(snap: Snapshot) -> str | None:
    """The last analysed scan's double-tip warning (the tip as it is now), or None."""
    for scan in snap.scans:
        if scan.status == "failed":
            continue
        return next((w for w in scan.warnings if w.lower().startswith("double tip")), None)
    return None


# ---- the loop --------------------------------------------------------------------------------------
class Dashboard:
    """Refreshes the screen every ``refresh_s`` from the database and the publishers."""

    def __init__(self, database: str, endpoints: list[str], refresh_s: float = 1.0,
                 console: Console | None = None, thumbnails: bool = True, security=None):
        from sqlalchemy import create_engine

        from .db import Database, DatabaseError

        self.database = database
        try:  # brings a database written by an older stmwatch up to date (as the daemon would)
            self.engine = Database(database).engine
        except DatabaseError as exc:  # newer schema, or not there yet: shown by read_snapshot
            log.warning("%s", exc)
            try:
                self.engine = create_engine(database)
            except Exception as exc:  # no driver for it: nothing to show
                raise DatabaseError(mask_secret(f"cannot open database {mask_url(database)}: {exc}", database)) from None
        self.endpoints = [e for e in endpoints if e]
        self.security = security  # [security]: the publishers' CURVE keys
        self.refresh_s = refresh_s
        self.console = console or Console()
        self.view = View(database=mask_url(database), endpoints=tuple(self.endpoints), thumbnails=thumbnails)
        self.live = LiveState()
        self._image_key: str | None = None
        self._image: np.ndarray | None = None

    def frame(self) -> RenderableType:
        snap = read_snapshot(self.engine)
        last = snap.scans[0] if snap.scans else None
        if last is not None and self.view.thumbnails and last.path != self._image_key:
            overlay = self.live.last_overlay or {}
            png = self.live.overlay_png if overlay.get("file") == last.path else None
            if png or not last.path.startswith("stream:"):
                self._image_key, self._image = last.path, scan_image(last.path, png)
        if self._image is not None and self._image.ndim == 3 and last is not None:
            last.defects = []  # the overlay PNG has its defects drawn already
        colour = self.console.color_system in ("truecolor", "256")
        return render(snap, self.live, self.view, image=self._image, colour=colour)

    def run(self, stop=None, once: bool = False) -> None:
        from rich.live import Live

        feed = Feed(self.endpoints, self.security)
        try:
            if once:
                feed.poll(self.live, timeout_s=min(self.refresh_s, 0.5))
                self.console.print(self.frame())
                return
            with Live(self.frame(), console=self.console, screen=False, auto_refresh=False,
                      redirect_stdout=False) as screen:
                next_draw = 0.0
                while stop is None or not stop.is_set():
                    feed.poll(self.live, timeout_s=0.1)
                    if time.monotonic() >= next_draw:
                        screen.update(self.frame(), refresh=True)
                        next_draw = time.monotonic() + self.refresh_s
        finally:
            feed.close()
            self.engine.dispose()


def endpoints_of(config) -> list[str]:
    """The daemon's publishers the dashboard listens to: ``[daemon] publish`` and ``[live] publish``."""
    live = getattr(config, "live", None)
    return [e for e in (config.daemon.publish, getattr(live, "publish", "")) if e]
