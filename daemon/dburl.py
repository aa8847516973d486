"""The database URL: where it comes from, and how it is shown (never with its password).

The URL is taken, first found first: ``stmwatch ... --db URL``; the environment variable
``STMWATCH_DATABASE_URL``; a systemd credential named ``database-url`` (the unit's
``LoadCredential=database-url:/etc/stmwatch/database-url`` puts it in ``$CREDENTIALS_DIRECTORY``,
readable by the service alone); ``[daemon] database`` of ``config.toml``. The last three are
applied by :func:`stmwatch.daemon.config.load_config`, so every command sees the same URL.

Everything stmwatch prints or logs about the database goes through :func:`mask_url` or
:func:`mask_secret`: the password is shown as ``***``.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote

ENV_VAR = "STMWATCH_DATABASE_URL"
CREDENTIAL = "database-url"
MASK = "***"


def url_from_environment(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """``(url, where)`` from ``STMWATCH_DATABASE_URL`` or the systemd credential, or None."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR, "").strip():
        return environ[ENV_VAR].strip(), f"${ENV_VAR}"
    folder = environ.get("CREDENTIALS_DIRECTORY")
    if folder:
        path = Path(folder) / CREDENTIAL
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        if text:
            return text, f"systemd credential {CREDENTIAL}"
    return None


def password_of(url: str) -> str | None:
    """The password in ``url`` (decoded), or None."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password or None
    except Exception:
        m = re.match(r"^[^:/]+://[^:/@]*:([^@]*)@", url)
        return unquote(m.group(1)) if m and m.group(1) else None


def mask_url(url: str) -> str:
    """``url`` with its password as ``***`` (``postgresql://u:***@host/db``)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: mask what looks like user:password@
        return re.sub(r"^([^:/]+://[^:/@]*):[^@]*@", rf"\1:{MASK}@", url)


def mask_secret(text: str, url: str) -> str:
    """``text`` (an error message, say) with the password of ``url``, as written or URL-encoded,
    replaced by ``***``, and the URL itself masked."""
    text = text.replace(url, mask_url(url))
    password = password_of(url)
    if password:
        for form in {password, quote(password, safe=""), quote(password)}:
            text = text.replace(form, MASK)
    return text


class MaskFilter(logging.Filter):
    """A handler filter that masks the password of ``url`` in every record it passes."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secret(message, self.url)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, mask_secret(text, self.url)
        return True


def mask_logs(url: str) -> None:
    """Mask the password of ``url`` in everything the root logger's handlers write (a library's
    message, a traceback). Does nothing for a URL without a password."""
    if not password_of(url):
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskFilter) and f.url == url for f in handler.filters):
            handler.addFilter(MaskFilter(url))


IN_MEMORY = Path(":memory:")  # what sqlite_path gives for an in-memory SQLite database


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite ``url`` (``~`` expanded); ``None`` for another database, an SQLite
    URI (``?uri=true``) or a URL SQLAlchemy cannot parse; :data:`IN_MEMORY` for an in-memory one (``sqlite://``,
    ``sqlite:///`` or ``sqlite:///:memory:``), which keeps nothing once the process ends."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # the Database names a bad URL
        return None
    if parsed.get_backend_name() != "sqlite" or str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        return None  # another database, or an SQLite URI ("file:...?mode=ro"): left to SQLite to read
    return IN_MEMORY if parsed.database in (None, "", ":memory:") else Path(parsed.database).expanduser()


def require_existing_sqlite(url: str) -> None:
    """For commands that only read (query, dashboard): an SQLite file that is not there is a
    mistyped path, not an empty database to create (opening it would create one and report
    nothing found); ValueError naming it."""
    path = sqlite_path(url)
    if path not in (None, IN_MEMORY) and not path.exists():
        raise ValueError(f"no database at {path} (is the path right? the daemon creates it)")
