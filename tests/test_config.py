"""config.toml at the top of the repository documents every key with its default; bad configs fail early."""
from __future__ import annotations

import dataclasses
import tomllib

import pytest

from stmwatch.daemon.commands.run import effective_config
from stmwatch.daemon.config import Config, ConfigError, load_config

from .conftest import REPO

CONFIG = REPO / "config.toml"


def _sections(config: Config) -> dict:
    values = dataclasses.asdict(config)
    values.pop("source")
    return values


def test_config_toml_lists_every_key_with_its_default():
    data = tomllib.loads(CONFIG.read_text())
    defaults = _sections(Config())
    assert sorted(data) == sorted(defaults), "config.toml sections differ from the Config dataclass"
    for section, values in defaults.items():
        missing = sorted(set(values) - set(data[section]))
        extra = sorted(set(data[section]) - set(values))
        assert not missing, f"[{section}] keys missing from config.toml: {missing}"
        assert not extra, f"[{section}] keys in config.toml that the dataclass does not have: {extra}"
        for key, value in values.items():
            assert data[section][key] == value, f"config.toml [{section}] {key} = {data[section][key]!r}, default {value!r}"


def test_every_key_in_config_toml_has_a_comment_above_it():
    lines = CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"config.toml line {i + 1} ({line!r}) is not documented"


def test_loading_config_toml_gives_the_defaults():
    assert _sections(load_config(CONFIG)) == _sections(Config())


@pytest.mark.parametrize("text, words", [
    ("[daemon]\nqueue_sise = 3\n", ["queue_sise", "unknown"]),
    ("[deamon]\n", ["deamon", "unknown section"]),
    ("[daemon]\nqueue_size = 'many'\n", ["daemon.queue_size", "integer"]),
    ("[daemon]\nqueue_size = 0\n", ["queue_size", "at least 1"]),
    ("[daemon]\ndriver = 'ftp'\n", ["driver", "ftp"]),
    ("[daemon]\nanalyser = 'magic'\n", ["analyser", "magic"]),
    ("[folder]\npatterns = '*.sxm'\n", ["folder.patterns", "list"]),
    ("[stream]\nsocket = 'dealer'\n", ["socket", "dealer"]),
    ("[models]\ntest_time_flips = 3\n", ["test_time_flips", "1, 2 or 4"]),
    ("[models]\nsurface_thresholds = { ge001 = 1.5 }\n", ["surface_thresholds", "between 0 and 1"]),
    ("[daemon\n", ["not valid TOML"]),
])
def test_bad_configs_are_clear_errors(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for word in words:
        assert word in str(info.value)


def test_command_line_overrides_the_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[daemon]\ndriver = 'stream'\ndatabase = 'sqlite:///a.db'\n[folder]\npath = '/nowhere'\n")
    ns = dataclasses.make_dataclass("Args", ["config", "watch", "stream", "db", "publish"])
    config = effective_config(ns(str(path), str(tmp_path), None, "sqlite:///b.db", "tcp://127.0.0.1:7001"))
    assert config.daemon.driver == "folder" and config.folder.path == str(tmp_path)
    assert config.daemon.database == "sqlite:///b.db" and config.daemon.publish == "tcp://127.0.0.1:7001"
    config = effective_config(ns(str(path), None, "tcp://10.0.0.2:9000", None, None))
    assert config.daemon.driver == "stream" and config.stream.endpoint == "tcp://10.0.0.2:9000"
    assert config.daemon.database == "sqlite:///a.db"  # from the file
    with pytest.raises(ConfigError):
        effective_config(ns(None, str(tmp_path), "tcp://x:1", None, None))


def test_run_stops_at_start_with_a_clear_error(tmp_path, capsys):
    from stmwatch.daemon.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nqueue_size = -1\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "queue_size" in capsys.readouterr().err
    assert main(["run", "--watch", str(tmp_path / "missing"), "--db", f"sqlite:///{tmp_path / 'x.db'}",
                 "--publish", ""]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_surface_can_have_its_own_threshold(tmp_path):
    assert load_config(None).models.threshold_for("si001h") == 0.25  # chosen on validation scans
    assert load_config(None).models.threshold_for("tio2110") == load_config(None).models.threshold == 0.4
    path = tmp_path / "t.toml"
    path.write_text("[models]\nthreshold = 0.5\nsurface_thresholds = { ge001 = 0.3 }\n")
    models = load_config(path).models
    assert (models.threshold_for("ge001"), models.threshold_for("si001h")) == (0.3, 0.5)  # the table replaces
    from stmwatch.models.load import load_segmenter
    from stmwatch.models.surfaces import get_surface

    assert load_segmenter(models, get_surface("ge001"), backend="torch").threshold == 0.3


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused_for_the_daemon(url):
    """Found by a review (stop 33): each thread got its own empty in-memory database, the lease
    failed, and every record was lost at exit; now the daemon stops at start."""
    config = Config()
    with pytest.raises(ConfigError, match="in-memory SQLite database: nothing would be kept"):
        dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, database=url)).check()


def test_a_database_in_a_missing_folder_names_the_folder(tmp_path):
    from stmwatch.daemon.db import Database, DatabaseError

    with pytest.raises(DatabaseError, match=f"the folder {tmp_path / 'nodir'} does not exist"):
        Database(f"sqlite:///{tmp_path / 'nodir' / 'x.db'}")


def test_a_relative_watch_folder_is_made_absolute(tmp_path, monkeypatch):
    """Each scan's row carries its path: a relative ``--watch`` would store paths that name no file
    seen from anywhere else (the service, a query from another folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scans").mkdir()
    ns = dataclasses.make_dataclass("Args", ["config", "watch", "stream", "db", "publish"])
    config = effective_config(ns(None, "scans", None, None, None))
    assert config.folder.path == str(tmp_path / "scans")


def test_the_scan_source_names_each_drivers_own_address(tmp_path):
    from stmwatch.daemon.daemon import scan_source

    config = load_config(None)
    config.daemon = dataclasses.replace(config.daemon, driver="nanonis")
    config.nanonis = dataclasses.replace(config.nanonis, host="10.0.0.5", port=6501)
    assert scan_source(config) == "10.0.0.5:6501"  # not the stream endpoint (the start-up line said so)
    config.daemon = dataclasses.replace(config.daemon, driver="stream")
    assert scan_source(config) == config.stream.endpoint
    config.daemon = dataclasses.replace(config.daemon, driver="folder")
    config.folder = dataclasses.replace(config.folder, path=str(tmp_path))
    assert scan_source(config) == str(tmp_path.resolve())
