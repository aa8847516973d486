"""What the daemon produces: the versioned :class:`ResultDocument` every sink sees.

Documents flow one way: driver (:mod:`stmwatch.drivers.base`: ``Acquisition``, ``PartialScan``)
→ pipeline → sinks. :class:`ResultDocument` is what the pipeline hands every sink (database,
overlay publisher, dashboard): status, defects in display-frame pixels *and* scanner-frame metres,
counts, timings, model and config versions. :func:`overlay_message` is its published JSON form.
The stream wire protocol is :mod:`stmwatch.drivers.stream.protocol`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from stmwatch.drivers.base import utcnow
from stmwatch.drivers.scan import Scan

__all__ = ["RESULT_VERSION", "STATUSES", "ResultDocument", "overlay_message", "new_uid", "utcnow"]

RESULT_VERSION = 2  # ResultDocument / overlay JSON (2: "warnings" added)
STATUSES = ("ok", "partial", "failed")


def new_uid() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass
class ResultDocument:
    """The outcome of one scan, as every sink sees it.

    ``defects`` are :meth:`stmwatch.models.defects.Defect.as_dict` dicts: ``x_px``/``y_px``
    display-frame pixels of the scan as read, ``x_m``/``y_m`` scanner-frame metres.
    ``status`` is ``ok``, ``partial`` (lines missing) or ``failed`` (``error`` says why);
    ``warnings`` what the operator should know about a scan that was analysed (a double tip, a
    surface unlike the configured one, pixels too coarse to segment), one sentence each.
    """

    uid: str
    path: str
    content_hash: str
    source: str
    status: str
    error: str | None
    surface: str | None
    geometry: dict | None
    acquired: dt.datetime | None
    received: dt.datetime
    processed: dt.datetime
    defects: list[dict]
    counts: dict[str, int]
    timing_ms: dict[str, float]
    model_versions: dict[str, str]
    config_version: str
    nan_rows: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    scan: Scan | None = dataclasses.field(default=None, repr=False)  # not serialised
    version: int = RESULT_VERSION


def _instant(when: dt.datetime) -> str:
    """ISO 8601 with its offset: a naive time here is UTC (``utcnow``), and an overlay read on
    another PC must not take it for that PC's local time."""
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).isoformat()


def overlay_message(doc: ResultDocument) -> dict[str, Any]:
    """The JSON object published for ``doc`` (``[b"overlay", json, optional png]``).

    Defect positions are scanner-frame metres (x right, y up, honouring offset and angle): what a
    lithography or manipulation tool needs to move the tip there.
    """
    return {
        "version": doc.version,
        "scan_uid": doc.uid,
        "file": doc.path,
        "content_hash": doc.content_hash,
        "status": doc.status,
        "error": doc.error,
        "surface": doc.surface,
        "acquired": doc.acquired.isoformat() if doc.acquired else None,
        "processed": _instant(doc.processed),
        "geometry": doc.geometry,
        "defects": doc.defects,
        "counts": doc.counts,
        "n_defects": len(doc.defects),
        "warnings": doc.warnings,
        "model_versions": doc.model_versions,
        "config_version": doc.config_version,
    }
