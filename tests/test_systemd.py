"""The systemd unit: systemd's own analyses accept it and rate its exposure at most 2.5.

Skipped (with the reason) only where ``systemd-analyze`` is missing or cannot run.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stmwatch.daemon.config import load_config
from stmwatch.daemon.service import SERVICE_CONFIG, install, render_unit

REPO = Path(__file__).resolve().parents[1]


def _analyze():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    try:
        subprocess.run([exe, "--version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"systemd-analyze cannot run here: {exc}")
    return exe


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_committed_unit_is_the_rendered_default():
    assert (REPO / "systemd" / "stmwatch.service").read_text() == render_unit(["/usr/local/bin/stmwatch"])


def test_unit_has_the_service_contract():
    s = unit_settings(render_unit(["/usr/local/bin/stmwatch"]))
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(s["WatchdogSec"][0]) > 0 and int(s["TimeoutStopSec"][0]) > 0
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    assert s["ProtectHome"] == ["yes"] and s["DynamicUser"] == ["yes"]
    assert s["ReadWritePaths"] == ["/var/lib/stmwatch /var/cache/stmwatch"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["DevicePolicy"] == ["closed"] and all("nvidia" in d for d in s["DeviceAllow"])
    assert s["ExecStart"] == ["/usr/local/bin/stmwatch run --config /etc/stmwatch/config.toml"]
    # memory and task limits: a runaway is throttled, then killed and restarted, never the lab PC
    assert s["MemoryHigh"] == ["6G"] and s["MemoryMax"] == ["8G"] and int(s["TasksMax"][0]) > 0


def test_home_install_gets_read_only_home():
    s = unit_settings(render_unit(["/home/lab/venv/bin/stmwatch"]))
    assert s["ProtectHome"] == ["read-only"]


def test_service_config_loads_and_points_into_the_writable_dirs(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(SERVICE_CONFIG)
    config = load_config(path)
    assert config.daemon.database == "sqlite:////var/lib/stmwatch/stmwatch.db"
    assert config.models.engine_cache.startswith("/var/cache/stmwatch/")


def test_install_writes_unit_and_config_without_overwriting_a_config(tmp_path):
    cfg = tmp_path / "etc" / "config.toml"
    written = install(tmp_path / "units", str(cfg), command=["/usr/local/bin/stmwatch"])
    assert written == [tmp_path / "units" / "stmwatch.service", cfg]
    cfg.write_text("# mine\n")
    assert install(tmp_path / "units", str(cfg), command=["/usr/local/bin/stmwatch"]) == [written[0]]
    assert cfg.read_text() == "# mine\n"


def test_systemd_analyze_verify_and_security(tmp_path):
    exe = _analyze()
    unit = tmp_path / "stmwatch.service"
    unit.write_text(render_unit())  # this install's paths: verify checks ExecStart is executable
    verify = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stderr
    problems = [line for line in verify.stderr.splitlines() if "stmwatch.service" in line]
    assert problems == [], problems
    security = subprocess.run([exe, "security", "--offline=true", str(unit)], capture_output=True,
                              text=True, timeout=120)
    match = re.search(r"Overall exposure level for stmwatch\.service:\s*([0-9.]+)", security.stdout + security.stderr)
    assert match, security.stdout[-2000:] + security.stderr[-2000:]
    assert float(match.group(1)) <= 1.5


def test_install_with_watch_and_db_writes_them_into_the_config(tmp_path, capsys):
    """``service install --watch DIR --db URL``: the config the service will read has them; a URL
    with a password goes into a 0600 credential file the unit loads, never the config or unit."""
    from stmwatch.daemon.cli import main

    scans = tmp_path / "stm-share"
    scans.mkdir()
    cfg = tmp_path / "etc" / "config.toml"
    args = ["service", "install", "--dest", str(tmp_path / "units"), "--config", str(cfg), "--watch", str(scans)]
    assert main([*args, "--db", "postgresql://stm:secret@db.lab:5432/stm", "--group", "stmdata", "--polling"]) == 0
    out = capsys.readouterr().out
    unit = (tmp_path / "units" / "stmwatch.service").read_text()
    credential = cfg.parent / "database-url"
    settings = unit_settings(unit)
    assert settings["ReadOnlyPaths"] == [str(scans)] and settings["SupplementaryGroups"] == ["stmdata"]
    assert settings["LoadCredential"] == [f"database-url:{credential}"]
    assert credential.read_text().strip() == "postgresql://stm:secret@db.lab:5432/stm"
    assert credential.stat().st_mode & 0o777 == 0o600
    assert "secret" not in cfg.read_text() + unit + out
    config = load_config(cfg)
    assert config.folder.path == str(scans) and config.folder.polling is True
    # the service gets the URL from its credential ($CREDENTIALS_DIRECTORY, as systemd sets it)
    import os

    os.environ["CREDENTIALS_DIRECTORY"] = str(cfg.parent)
    try:
        assert load_config(cfg).daemon.database == "postgresql://stm:secret@db.lab:5432/stm"
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]
    # a config that exists is not overwritten without --force; a URL without a password goes into it
    assert main([*args, "--db", "sqlite:////var/lib/stmwatch/x.db"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--db", "sqlite:////var/lib/stmwatch/x.db", "--force"]) == 0
    config = load_config(cfg)
    assert config.daemon.database == "sqlite:////var/lib/stmwatch/x.db" and config.folder.polling is False
    assert main(["service", "install", "--dest", str(tmp_path / "u2"), "--config", str(tmp_path / "c2.toml"),
                 "--watch", str(tmp_path / "not-mounted")]) == 1


def test_network_filesystem_from_mountinfo(tmp_path):
    from stmwatch.daemon.service import network_filesystem

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "90 22 0:50 / /mnt/nanonis rw,relatime shared:40 - cifs //stm-pc/data rw,vers=3.1.1\n"
        "91 22 0:51 / /mnt/nfs\\040share rw - nfs4 srv:/x rw\n")
    assert network_filesystem("/mnt/nanonis/2026/scan.sxm", str(mountinfo)) == "cifs"
    assert network_filesystem("/mnt/nanonis", str(mountinfo)) == "cifs"
    assert network_filesystem("/mnt/nfs share/a", str(mountinfo)) == "nfs4"
    assert network_filesystem("/mnt/nanonis2", str(mountinfo)) is None
    assert network_filesystem("/var/lib/stmwatch", str(mountinfo)) is None


def test_systemd_analyze_verifies_the_unit_with_watch_group_and_credential(tmp_path):
    exe = _analyze()
    unit = tmp_path / "stmwatch.service"
    unit.write_text(render_unit(watch=str(tmp_path), group="stmdata", credential="/etc/stmwatch/database-url"))
    verify = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    problems = [line for line in verify.stderr.splitlines() if "stmwatch.service" in line]
    assert verify.returncode == 0 and problems == [], verify.stderr


def test_installed_command_is_this_environments_script(tmp_path, monkeypatch):
    """Not whatever 'stmwatch' comes first on PATH (a pyenv shim in /root was picked before)."""
    import sys

    from stmwatch.daemon.service import installed_command

    venv = tmp_path / "opt" / "stmwatch" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    other = tmp_path / "shims"
    other.mkdir()
    (other / "stmwatch").write_text("#!/bin/sh\nexec pyenv exec stmwatch \"$@\"\n")
    (other / "stmwatch").chmod(0o755)
    monkeypatch.setenv("PATH", str(other))
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    assert installed_command() == [str(venv / "python"), "-m", "stmwatch.daemon"]  # the shim runs another Python
    (venv / "stmwatch").write_text(f"#!{venv / 'python'}\n")
    assert installed_command() == [str(venv / "stmwatch")]


def test_serve_exits_with_1_when_neither_the_new_nor_the_old_config_starts():
    """Found by a review (stop 33): a SIGHUP whose new config failed after the daemon had stopped
    fell back to the old config outside any try; if that failed too (its folder unmounted, say),
    the exception escaped serve as a traceback instead of a clean exit for systemd to restart."""
    import signal
    import threading
    import types

    from stmwatch.daemon.service import serve

    class Daemon:
        config = types.SimpleNamespace(daemon=types.SimpleNamespace(watchdog_s=0, driver="folder"))
        running, driver_error, stopped = True, None, False

        def reload(self, config):
            self.running = False  # stopped, and cannot start again
            raise ValueError(f"folder of {config} is gone")

        def stop(self, drain, timeout):
            self.stopped = True

    class Quiet:  # notifier and live side: nothing to tell
        watchdog_period_s = 0

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    daemon = Daemon()
    timer = threading.Timer(0.05, lambda: signal.raise_signal(signal.SIGHUP))  # handled in this (main) thread
    timer.start()
    code = serve(daemon, lambda: "the new config", notifier=Quiet(), tick_s=0.02, live=Quiet())
    timer.join()
    assert code == 1 and daemon.stopped


def test_install_takes_a_relative_config_as_absolute_and_keeps_an_existing_configs_folder(tmp_path, monkeypatch):
    """systemd takes absolute paths only (a relative ``LoadCredential=`` source is ignored): a
    relative ``--config`` is written into the unit made absolute. Installing again over a config
    that exists (no --watch: it is kept) names that config's scan folder read-only, as before."""
    from stmwatch.daemon.cli import main

    monkeypatch.chdir(tmp_path)
    scans = tmp_path / "stm-share"
    scans.mkdir()
    args = ["service", "install", "--dest", "units", "--config", "etc/config.toml"]
    assert main([*args, "--watch", str(scans), "--db", "postgresql://stm:pw@db.lab/stm"]) == 0
    settings = unit_settings((tmp_path / "units" / "stmwatch.service").read_text())
    assert settings["ExecStart"][0].endswith(f"run --config {tmp_path / 'etc' / 'config.toml'}")
    assert settings["LoadCredential"] == [f"database-url:{tmp_path / 'etc' / 'database-url'}"]
    assert main(args) == 0  # the unit again, the config kept
    settings = unit_settings((tmp_path / "units" / "stmwatch.service").read_text())
    assert settings["ReadOnlyPaths"] == [str(scans)]
