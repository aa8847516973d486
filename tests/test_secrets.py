"""The database password never appears in any output: errors, the start-up line, the dashboard,
the demo summary, logs. Tested with a URL holding a password and a server that is not there."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from stmwatch.daemon.cli import main
from stmwatch.daemon.dburl import mask_secret, mask_url, password_of, url_from_environment

SECRET = "s3cr%t-pw"  # URL-encoded in the URL as s3cr%25t-pw
URLS = ["postgresql://stm:s3cr%25t-pw@127.0.0.1:1/stm",  # no driver module needed to fail: psycopg
        "postgresql+psycopg2://stm:s3cr%25t-pw@127.0.0.1:1/stm"]  # the connection itself is refused


def test_mask_url_and_secret():
    assert password_of(URLS[0]) == SECRET
    assert mask_url(URLS[0]) == "postgresql://stm:***@127.0.0.1:1/stm"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db" and password_of("sqlite:///x.db") is None
    message = f"failed {URLS[0]} with password {SECRET} (encoded s3cr%25t-pw)"
    assert SECRET not in mask_secret(message, URLS[0]) and "s3cr%25t-pw" not in mask_secret(message, URLS[0])
    assert mask_url("not a url://u:pw@h") in ("not a url://u:***@h", "not a url://u:pw@h".replace("pw", "***"))


def test_url_from_environment_and_credential(tmp_path):
    assert url_from_environment({"STMWATCH_DATABASE_URL": URLS[0]}) == (URLS[0], "$STMWATCH_DATABASE_URL")
    (tmp_path / "database-url").write_text(URLS[1] + "\n")
    assert url_from_environment({"CREDENTIALS_DIRECTORY": str(tmp_path)})[0] == URLS[1]
    assert url_from_environment({"STMWATCH_DATABASE_URL": URLS[0], "CREDENTIALS_DIRECTORY": str(tmp_path)})[0] == URLS[0]
    assert url_from_environment({}) is None


@pytest.mark.parametrize("url", URLS)
def test_no_command_prints_the_password(url, tmp_path, capsys, caplog, monkeypatch):
    if "psycopg2" in url:
        pytest.importorskip("psycopg2")
    caplog.set_level(logging.DEBUG)
    scans = tmp_path / "scans"
    scans.mkdir()
    commands = [
        (["run", "--watch", str(scans), "--db", url, "--publish", ""], {}),
        (["run", "--watch", str(scans), "--publish", ""], {"STMWATCH_DATABASE_URL": url}),
        (["query", "scans", "--db", url], {}),
        (["query", "defects", "--geometry"], {"STMWATCH_DATABASE_URL": url}),
        (["dashboard", "--once"], {"STMWATCH_DATABASE_URL": url}),  # shows the error, exit 0
        (["demo", "--seconds", "1", "--db", url, "--no-dashboard", "--dir", str(tmp_path / "demo")], {}),
    ]
    for args, env in commands:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            code = main(args)
        out, err = capsys.readouterr()
        text = out + err + caplog.text
        caplog.clear()
        assert SECRET not in text and "s3cr%25t-pw" not in text, args
        assert code != 0 or args[0] == "dashboard", (args, text[-500:])  # the server is not there
        assert "stm:***@127.0.0.1:1/stm" in text, (args, text[-800:])  # says which database, masked


def test_start_up_line_and_logs_of_a_real_process(tmp_path):
    """The daemon as systemd starts it, its URL from the credential, debug logging on."""
    pytest.importorskip("psycopg2")
    (tmp_path / "database-url").write_text(URLS[1])
    (tmp_path / "scans").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "stmwatch.daemon", "-vv", "run", "--watch", str(tmp_path / "scans"),
                           "--publish", ""], capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "connection refused" in text.lower(), text[-800:]
    assert SECRET not in text and "s3cr%25t-pw" not in text
    assert "postgresql+psycopg2://stm:***@127.0.0.1:1/stm" in text


def test_log_filter_masks_what_libraries_log(caplog):
    from stmwatch.daemon.dburl import MaskFilter

    handler = logging.StreamHandler()
    record = logging.LogRecord("sqlalchemy", logging.ERROR, __file__, 1, "connect %s failed", (URLS[0],), None)
    MaskFilter(URLS[0]).filter(record)
    assert SECRET not in record.getMessage() and "s3cr%25t-pw" not in record.getMessage()
    assert "***" in handler.format(record)
