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
