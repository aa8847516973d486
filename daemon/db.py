"""The defect database: SQLAlchemy 2 ORM tables ``scans`` and ``defects``, and their queries.

Any SQLAlchemy URL works (``sqlite:///stmwatch.db`` by default, ``postgresql://…``); a SQLite file
is opened in WAL mode so the dashboard and ``stmwatch query`` can read while the daemon writes.
The schema carries a version (table ``meta``); :meth:`Database.upgrade` brings an older database
up to date on start and refuses a newer one.

Ingest is idempotent: a scan is recorded once per content hash (a failed file once per path and
content hash, so a bad file is not retried endlessly but a fixed file with new content is).

Times (``acquired``, ``received``, ``processed``) are instants: :class:`UTCDateTime` columns, a
``timestamp with time zone`` in PostgreSQL and UTC in SQLite (which has no time zones). A naive
time given to the database is UTC; the pipeline makes a scan's naive ``acquired`` (the
microscope PC's local clock in an ``.sxm`` header) aware in this host's time zone first. Read
back, times are naive UTC in Python and ISO 8601 with ``+00:00`` in query output. (Databases
written before this stored ``acquired`` as naive local time; those rows are not converted.)

A file name that is not UTF-8 (``scan_\xff\xfe.sxm`` from a Windows share: Python holds it with
surrogate escapes, which no database can encode) is stored as ``fsbytes:`` and its bytes
percent-encoded (:func:`path_text`); :func:`path_from_text` gives back the exact name.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import time
from typing import Any

from urllib.parse import quote_from_bytes, unquote_to_bytes

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, func,
                        inspect, select, text)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .dburl import IN_MEMORY, mask_secret, mask_url, sqlite_path
from .documents import ResultDocument

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2


@dataclasses.dataclass(frozen=True)
class AddColumn:
    """A migration step: add ``column`` (SQL ``sql_type``) to ``table`` unless it is there already
    (an upgrade interrupted, or run by two processes at once), then set it to ``fill`` (SQL) where
    it is NULL, for the rows written before it existed."""

    table: str
    column: str
    sql_type: str
    fill: str | None = None


# version n -> the steps (AddColumn, or SQL statements) taking a database from version n-1 to n
MIGRATIONS: dict[int, list[AddColumn | str]] = {
    2: [AddColumn("scans", "warnings", "JSON", fill="'[]'")],  # what the operator should know about a scan
}


LEASE_KEY = "daemon_lease"  # meta rows: the daemon taking scans from one source, {"owner", "host", "pid", "expires"}


def lease_key(source: str) -> str:
    """The ``meta`` key of the lease on the scan source ``source`` ("" = the whole database): one
    daemon per source, while several microscopes (one daemon each) share one database."""
    return f"{LEASE_KEY}:{hashlib.sha256(source.encode()).hexdigest()[:16]}" if source else LEASE_KEY


class DatabaseError(RuntimeError):
    """The database cannot be used (newer schema, unreachable URL, read-only, another daemon on it)."""


def lease_owner() -> str:
    """A new lease owner in this process: ``host:pid:tag``."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def _owner_alive(held: dict) -> bool:
    """False only when the holder is a process on this host that no longer exists (killed)."""
    if held.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(held.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


class UTCDateTime(TypeDecorator):
    """An instant: aware times are converted to UTC, naive ones are taken as UTC; stored with the
    zone where the database has one (PostgreSQL), as UTC elsewhere; read back as naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class ScanRow(Base):
    """One scan: where it came from, its geometry, what happened to it and with which models."""

    __tablename__ = "scans"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    dedup_key: Mapped[str] = mapped_column(String(2048), unique=True)  # content hash (+ path if failed)
    path: Mapped[str] = mapped_column(String(1024), index=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)  # ok | partial | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    surface: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    acquired: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    received: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    processed: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    range_x_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    range_y_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    offset_x_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    offset_y_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    angle_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    direction: Mapped[str | None] = mapped_column(String(8), nullable=True)
    nan_rows: Mapped[int] = mapped_column(Integer, default=0)
    n_defects: Mapped[int] = mapped_column(Integer, default=0)
    timing_ms: Mapped[dict] = mapped_column(JSON, default=dict)
    model_versions: Mapped[dict] = mapped_column(JSON, default=dict)
    config_version: Mapped[str] = mapped_column(String(64), default="")
    warnings: Mapped[list | None] = mapped_column(JSON, default=list, nullable=True)  # one sentence each
    defects: Mapped[list["DefectRow"]] = relationship(back_populates="scan", cascade="all, delete-orphan")


class DefectRow(Base):
    """One defect: display-frame pixels of its scan and scanner-frame metres."""

    __tablename__ = "defects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    x_px: Mapped[float] = mapped_column(Float)
    y_px: Mapped[float] = mapped_column(Float)
    x_m: Mapped[float] = mapped_column(Float)
    y_m: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(64), index=True)
    score: Mapped[float] = mapped_column(Float)
    area_px: Mapped[float] = mapped_column(Float)
    scan: Mapped[ScanRow] = relationship(back_populates="defects")


SCAN_COLUMNS = ("id", "uid", "path", "status", "error", "n_defects", "surface", "source", "acquired",
                "processed", "columns", "rows", "range_x_m", "range_y_m", "offset_x_m", "offset_y_m",
                "angle_deg", "nan_rows", "content_hash", "config_version", "model_versions", "timing_ms",
                "warnings")
DEFECT_COLUMNS = ("id", "scan_id", "path", "surface", "label", "score", "x_px", "y_px", "x_m", "y_m",
                  "area_px", "processed")
# each defect's scan geometry (``query defects --geometry``): enough to place it in the scan frame
GEOMETRY_COLUMNS = ("status", "acquired", "columns", "rows", "range_x_m", "range_y_m", "offset_x_m",
                    "offset_y_m", "angle_deg", "direction")


FS_BYTES = "fsbytes:"  # prefix of a path stored as percent-encoded bytes


def path_text(path: str) -> str:
    """``path`` as storable text: itself when it is UTF-8, else ``fsbytes:`` and its file-system bytes
    percent-encoded (a name that itself starts with the prefix too, so the form is unambiguous)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if not path.startswith(FS_BYTES):
            return path
    return FS_BYTES + quote_from_bytes(os.fsencode(path), safe="/:._-~ ")


def path_from_text(text: str) -> str:
    """The inverse of :func:`path_text`: the exact name (with surrogate escapes where not UTF-8)."""
    return os.fsdecode(unquote_to_bytes(text[len(FS_BYTES):])) if text.startswith(FS_BYTES) else text


def readable(text: str | None) -> str | None:
    """Free text (an error naming a file) storable as UTF-8: bytes that are not shown as ``\\xff``."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def dedup_key(content_hash: str, status: str, path: str) -> str:
    """The content hash; for a failed scan with its path (hashed when too long for the column)."""
    if status != "failed":
        return content_hash
    key = f"{content_hash}@{path_text(path)}"
    width = ScanRow.__table__.c.dedup_key.type.length
    return key if len(key) <= width else f"{content_hash}@sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def fit(text: str | None, column) -> str | None:
    """``text`` cut to the width of ``column`` (a ``String(n)``), its end shown as ``…``: PostgreSQL
    refuses longer text, and a scan that cannot be stored would hold back every scan after it (a
    stream's ``scan_id`` or a class label is whatever the sender or the operator wrote)."""
    width = column.type.length
    if text is None or width is None or len(text) <= width:
        return text
    log.warning("%.60s...: %d characters, more than the %d of %s; stored cut", text, len(text), width, column)
    return text[:width - 1] + "…"


@dataclasses.dataclass
class Filters:
    """Query filters: ``since``/``until`` bound the processing time (UTC), the rest match exactly."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    label: str | None = None
    surface: str | None = None
    status: str | None = None


def _sqlite_wal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """The database at ``url``; :meth:`upgrade` is called on open unless ``upgrade=False``."""

    def __init__(self, url: str, upgrade: bool = True):
        self.url = url
        path = sqlite_path(url)
        if path not in (None, IN_MEMORY) and not path.parent.is_dir():
            raise DatabaseError(f"cannot open database {mask_url(url)}: the folder {path.parent} does not exist")
        try:
            self.engine = create_engine(url, future=True)
        except Exception as exc:  # bad URL, missing driver
            raise DatabaseError(mask_secret(f"cannot open database {mask_url(url)}: {exc}", url)) from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_wal)
        if upgrade:
            self.upgrade()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- schema ------------------------------------------------------------------------------
    def schema_version(self) -> int | None:
        with Session(self.engine) as s:
            try:
                row = s.get(Meta, "schema_version")
            except Exception:
                return None
            return int(row.value) if row else None

    def upgrade(self) -> int:
        """Create missing tables, apply migrations up to :data:`SCHEMA_VERSION`; the version now."""
        try:
            Base.metadata.create_all(self.engine)
        except Exception as exc:
            raise DatabaseError(mask_secret(f"cannot open database {mask_url(self.url)}: {exc}", self.url)) from None
        with Session(self.engine) as s, s.begin():
            row = s.get(Meta, "schema_version")
            current = int(row.value) if row else None
            if current is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return SCHEMA_VERSION
            if current > SCHEMA_VERSION:
                raise DatabaseError(f"database {mask_url(self.url)} has schema version {current}, newer than this "
                                    f"stmwatch's {SCHEMA_VERSION}; upgrade stmwatch")
            try:
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    log.info("upgrading database schema %d -> %d", version - 1, version)
                    for step in MIGRATIONS.get(version, []):
                        _migrate(s, step)
            except Exception as exc:
                raise DatabaseError(mask_secret(f"cannot upgrade database {mask_url(self.url)} from schema version "
                                                f"{current} to {SCHEMA_VERSION}: {exc}", self.url)) from None
            row.value = str(SCHEMA_VERSION)
        return SCHEMA_VERSION

    # ---- writing at all, and by one daemon ------------------------------------------------------
    def check_writable(self) -> None:
        """Write and commit one row; :class:`DatabaseError` naming the database if it cannot be written
        (a read-only file or server role, a full disk): better than analysing scans and storing none."""
        try:
            with Session(self.engine) as s, s.begin():
                s.merge(Meta(key="last_write_check", value=dt.datetime.now(dt.timezone.utc).isoformat()))
        except Exception as exc:
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            raise DatabaseError(mask_secret(f"database {mask_url(self.url)!r} cannot be written ({reason}); the daemon "
                                            "would analyse scans and store none of them", self.url)) from None

    def take_lease(self, owner: str, ttl_s: float, source: str = "") -> None:
        """Hold the scan source ``source`` in this database for ``owner`` for ``ttl_s`` seconds
        (renewed by calling again); ``source`` "" holds the whole database.

        :class:`DatabaseError` if another live daemon holds it (a holder on this host whose process
        is gone -- killed -- or a lease not renewed in time is taken over): two daemons on one
        source would analyse every scan twice. Daemons of other sources (microscopes) share the database."""
        host, pid = (owner.split(":") + ["", ""])[:2]
        now = time.time()
        key = lease_key(source)
        value = json.dumps({"owner": owner, "host": host, "pid": int(pid) if pid.isdigit() else 0,
                            "expires": round(now + ttl_s, 3)})
        try:
            with Session(self.engine) as s, s.begin():
                row = s.get(Meta, key, with_for_update=True)
                if row is None:
                    s.add(Meta(key=key, value=value))
                    return
                try:
                    held = json.loads(row.value)
                except ValueError:
                    held = {}
                if held.get("owner") not in (None, owner) and held.get("expires", 0) > now and _owner_alive(held):
                    raise DatabaseError(mask_secret(
                        f"database {mask_url(self.url)!r} is in use by another stmwatch daemon ({held.get('owner')}, "
                        + (f"taking scans from {source!r}, " if source else "")
                        + f"lease renewed until {dt.datetime.fromtimestamp(held['expires'], dt.timezone.utc):%H:%M:%S} "
                        "UTC): stop it, or give this one another database", self.url))
                row.value = value
        except DatabaseError:
            raise
        except Exception as exc:
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            raise DatabaseError(mask_secret(f"database {mask_url(self.url)!r}: cannot take the daemon lease ({reason})",
                                            self.url)) from None

    def release_lease(self, owner: str, source: str = "") -> None:
        """Give the lease on ``source`` up if ``owner`` holds it (errors ignored: it expires anyway)."""
        try:
            with Session(self.engine) as s, s.begin():
                row = s.get(Meta, lease_key(source))
                if row is not None and json.loads(row.value).get("owner") == owner:
                    s.delete(row)
        except Exception as exc:
            log.debug("lease not released: %s", exc)

    # ---- ingest ------------------------------------------------------------------------------
    def seen(self, path: str, content_hash: str) -> bool:
        """True when this content is recorded (as a scan, or as this path failing)."""
        keys = [content_hash, dedup_key(content_hash, "failed", path)]
        with Session(self.engine) as s:
            return s.scalar(select(func.count()).select_from(ScanRow).where(ScanRow.dedup_key.in_(keys))) > 0

    def record(self, doc: ResultDocument) -> int | None:
        """Store a result with its defects in one transaction; its row id, or None if already there."""
        g = doc.geometry or {}
        pixels = g.get("pixels") or [None, None]
        range_m = g.get("range_m") or [None, None]
        offset_m = g.get("offset_m") or [None, None]
        scans, defects = ScanRow.__table__.c, DefectRow.__table__.c
        row = ScanRow(
            uid=doc.uid, dedup_key=dedup_key(doc.content_hash, doc.status, doc.path),
            path=fit(path_text(doc.path), scans.path), content_hash=doc.content_hash,
            source=fit(doc.source, scans.source), status=doc.status, error=readable(doc.error),
            surface=fit(doc.surface, scans.surface), acquired=doc.acquired, received=doc.received,
            processed=doc.processed,
            columns=pixels[0], rows=pixels[1], range_x_m=range_m[0], range_y_m=range_m[1],
            offset_x_m=offset_m[0], offset_y_m=offset_m[1], angle_deg=g.get("angle_deg"),
            direction=g.get("direction"), nan_rows=doc.nan_rows, n_defects=len(doc.defects),
            timing_ms=doc.timing_ms, model_versions=doc.model_versions,
            config_version=fit(doc.config_version, scans.config_version), warnings=doc.warnings,
            defects=[DefectRow(x_px=d["x_px"], y_px=d["y_px"], x_m=d["x_m"], y_m=d["y_m"],
                               label=fit(d["label"], defects.label),
                               score=d["score"], area_px=d["area_px"]) for d in doc.defects])
        try:
            with Session(self.engine) as s, s.begin():
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError:
            log.info("%s: already in the database (content %s)", doc.path, doc.content_hash[:12])
            return None

    # ---- queries -----------------------------------------------------------------------------
    def _scan_filter(self, stmt, f: Filters):
        if f.since:
            stmt = stmt.where(ScanRow.processed >= f.since)
        if f.until:
            stmt = stmt.where(ScanRow.processed < f.until)
        if f.surface:
            stmt = stmt.where(ScanRow.surface == f.surface)
        if f.status:
            stmt = stmt.where(ScanRow.status == f.status)
        return stmt

    def scans(self, filters: Filters | None = None) -> list[dict[str, Any]]:
        """Scans in processing order as dicts keyed by :data:`SCAN_COLUMNS`; with ``label``, only
        scans with at least one defect of that label."""
        f = filters or Filters()
        stmt = self._scan_filter(select(ScanRow), f).order_by(ScanRow.id)
        if f.label:
            stmt = stmt.where(ScanRow.id.in_(select(DefectRow.scan_id).where(DefectRow.label == f.label)))
        with Session(self.engine) as s:
            return [{c: _plain(getattr(r, c)) for c in SCAN_COLUMNS} for r in s.scalars(stmt)]

    def defects(self, filters: Filters | None = None, geometry: bool = False) -> list[dict[str, Any]]:
        """Defects with their scan's path, surface and processing time, keyed by :data:`DEFECT_COLUMNS`
        (and, with ``geometry``, their scan's :data:`GEOMETRY_COLUMNS`)."""
        f = filters or Filters()
        stmt = self._scan_filter(select(DefectRow, ScanRow).join(ScanRow), f).order_by(DefectRow.id)
        if f.label:
            stmt = stmt.where(DefectRow.label == f.label)
        out = []
        with Session(self.engine) as s:
            for d, sc in s.execute(stmt):
                values = {c: getattr(d, c) for c in DEFECT_COLUMNS if hasattr(DefectRow, c)}
                values.update(path=sc.path, surface=sc.surface, processed=sc.processed)
                row = {c: _plain(values[c]) for c in DEFECT_COLUMNS}
                if geometry:
                    row.update({c: _plain(getattr(sc, c)) for c in GEOMETRY_COLUMNS})
                out.append(row)
        return out

    def counts(self, filters: Filters | None = None) -> list[dict[str, Any]]:
        """Defects per label: ``[{"label", "n"}]``, most frequent first."""
        f = filters or Filters()
        n = func.count(DefectRow.id)
        stmt = self._scan_filter(select(DefectRow.label, n).join(ScanRow), f).group_by(DefectRow.label)
        if f.label:
            stmt = stmt.where(DefectRow.label == f.label)
        with Session(self.engine) as s:
            rows = s.execute(stmt.order_by(n.desc(), DefectRow.label)).all()
        return [{"label": label, "n": int(count)} for label, count in rows]

    def summary(self) -> dict[str, int]:
        """Scans by status and the number of defects: ``{"ok": …, "partial": …, "failed": …, "defects": …}``."""
        with Session(self.engine) as s:
            by_status = dict(s.execute(select(ScanRow.status, func.count()).group_by(ScanRow.status)).all())
            n_defects = s.scalar(select(func.count()).select_from(DefectRow))
        return {"ok": by_status.get("ok", 0), "partial": by_status.get("partial", 0),
                "failed": by_status.get("failed", 0), "defects": int(n_defects or 0)}


def _migrate(session: Session, step: AddColumn | str) -> None:
    if isinstance(step, str):
        session.execute(text(step))
        return
    present = {c["name"] for c in inspect(session.connection()).get_columns(step.table)}
    if step.column not in present:
        session.execute(text(f"ALTER TABLE {step.table} ADD COLUMN {step.column} {step.sql_type}"))
    if step.fill is not None:
        session.execute(text(f"UPDATE {step.table} SET {step.column} = {step.fill} WHERE {step.column} IS NULL"))


def _plain(value):
    if isinstance(value, dt.datetime):  # naive UTC as read back (UTCDateTime)
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).isoformat()
    return value
