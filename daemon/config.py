"""The daemon's configuration: one :class:`Config` dataclass loaded from ``config.toml``.

Each section is a small dataclass that lives beside the code it configures (the folder driver's
settings in ``drivers/folder``, preprocessing in ``models/preprocess`` ...); this module composes
them and checks a TOML file against them: unknown sections or keys, and values of the wrong type,
are :class:`ConfigError` naming the key, raised at start-up rather than mid-run.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path

from stmwatch.daemon.dburl import IN_MEMORY, sqlite_path, url_from_environment
from stmwatch.drivers.folder.settings import FolderSettings
from stmwatch.drivers.nanonis.settings import NanonisSettings
from stmwatch.drivers.stream.settings import StreamSettings
from stmwatch.drivers.wire import SecuritySettings, check_endpoint, insecure_message, is_loopback
from stmwatch.models.preprocess import PreprocessSettings
from stmwatch.models.settings import ANALYSERS, ModelSettings

from .live import LiveSettings

DRIVERS = ("folder", "stream", "nanonis")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the key."""


@dataclasses.dataclass
class DaemonSettings:
    """What the daemon runs and where its results go."""

    driver: str = "folder"  # where scans come from: folder | stream | nanonis
    database: str = "sqlite:///stmwatch.db"  # any SQLAlchemy URL
    publish: str = "tcp://127.0.0.1:5556"  # ZeroMQ PUB endpoint for overlays ("" = off)
    publish_png: bool = False  # attach a PNG of the overlay to each message
    analyser: str = "shipped"  # shipped (UNet + few-shot classifier) | standin (classical blobs, no weights)
    queue_size: int = 8  # scans waiting between driver and pipeline (back-pressure above this)
    log_level: str = "INFO"
    watchdog_s: float = 0.0  # systemd watchdog ping period; 0 = from WATCHDOG_USEC, or off
    lease_s: float = 60.0  # the daemon holds the database this long, renewed every third of it

    def check(self) -> None:
        if self.driver not in DRIVERS:
            raise ConfigError(f"daemon.driver must be one of {DRIVERS}, not {self.driver!r}")
        if self.queue_size < 1:
            raise ConfigError("daemon.queue_size must be at least 1")
        if self.analyser not in ANALYSERS:
            raise ConfigError(f"daemon.analyser must be one of {ANALYSERS}, not {self.analyser!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"daemon.log_level must be one of {LOG_LEVELS}, not {self.log_level!r}")
        if not self.database:
            raise ConfigError("daemon.database must be an SQLAlchemy URL, e.g. sqlite:///stmwatch.db")
        if sqlite_path(self.database) == IN_MEMORY:  # each thread would get its own, and all is lost at exit
            raise ConfigError(f"daemon.database {self.database!r} is an in-memory SQLite database: nothing would be "
                              "kept; give a file, e.g. sqlite:///stmwatch.db")
        if self.publish:
            try:
                check_endpoint(self.publish, bind=True, what="daemon.publish")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.watchdog_s < 0:
            raise ConfigError("daemon.watchdog_s must be at least 0")
        if self.lease_s < 3:
            raise ConfigError("daemon.lease_s must be at least 3 seconds")


@dataclasses.dataclass
class Config:
    """All of stmwatch's settings, one section per ``[table]`` of ``config.toml``."""

    daemon: DaemonSettings = dataclasses.field(default_factory=DaemonSettings)
    folder: FolderSettings = dataclasses.field(default_factory=FolderSettings)
    stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)
    nanonis: NanonisSettings = dataclasses.field(default_factory=NanonisSettings)
    preprocess: PreprocessSettings = dataclasses.field(default_factory=PreprocessSettings)
    models: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    live: LiveSettings = dataclasses.field(default_factory=LiveSettings)
    security: SecuritySettings = dataclasses.field(default_factory=SecuritySettings)
    source: Path | None = None  # the file it was read from, if any

    def check(self) -> None:
        for field in dataclasses.fields(self):
            section = getattr(self, field.name)
            if dataclasses.is_dataclass(section) and hasattr(section, "check"):
                try:
                    section.check()
                except ConfigError:
                    raise
                except ValueError as exc:
                    raise ConfigError(f"[{field.name}] {exc}") from None
        if not self.security.curve and not self.security.allow_insecure_remote:
            binds = [("[daemon] publish", self.daemon.publish), ("[live] publish", self.live.publish)]
            if self.daemon.driver == "stream" and self.stream.bind:
                binds.append(("[stream] endpoint", self.stream.endpoint))
            for what, endpoint in binds:
                if endpoint and not is_loopback(endpoint):
                    raise ConfigError(insecure_message(what, endpoint))

    def as_dict(self) -> dict:
        """Plain values, for recording the config a result was made with."""
        out = dataclasses.asdict(self)
        out["source"] = str(self.source) if self.source else None
        return out


def _coerce(value, annotation, where: str):
    """Check ``value`` against a dataclass field's type annotation (str, int, float, bool, list)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not {annotation}")
    if origin is list:
        (item,) = typing.get_args(annotation) or (str,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected nothing, got {value!r}")
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        return Path(value).expanduser()
    return value


def _fill(section_cls, table: dict, name: str):
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(section_cls)
    fields = {f.name for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ConfigError(f"[{name}] unknown key(s) {unknown}; known keys are {sorted(fields)}")
    values = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in table.items()}
    return section_cls(**values)


def config_from_dict(data: dict, source: Path | None = None) -> Config:
    """Build and check a :class:`Config` from parsed TOML (missing keys keep their defaults)."""
    hints = typing.get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "source"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known sections are {sorted(sections)}")
    config = Config(**{k: _fill(hints[k], v, k) for k, v in data.items()}, source=source)
    config.check()
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Read ``path`` (TOML), or return the defaults when ``path`` is None; the database URL is
    then taken from ``STMWATCH_DATABASE_URL`` or the systemd credential ``database-url`` where
    one is set (:mod:`stmwatch.daemon.dburl`), over ``[daemon] database``."""
    config = _load_file(path)
    found = url_from_environment()
    if found:
        config.daemon = dataclasses.replace(config.daemon, database=found[0])
        config.daemon.check()
    return config


def _load_file(path: str | Path | None) -> Config:
    if path is None:
        return config_from_dict({})
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return config_from_dict(data, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
