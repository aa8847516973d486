"""One rule for publish endpoints already in use (issue 16, failure 6): ``[daemon] publish`` and
``[live] publish`` both stop ``stmwatch run`` at start with the endpoint named (exit 2). Before,
a taken ``[live] publish`` only logged a warning and the daemon ran without live defects."""
from __future__ import annotations

import subprocess
import sys

import pytest
import zmq


@pytest.mark.parametrize("section", ["daemon", "live"])
def test_a_publish_endpoint_in_use_stops_the_start(tmp_path, section):
    ctx = zmq.Context()
    taken = ctx.socket(zmq.PUB)
    taken.bind("tcp://127.0.0.1:*")
    endpoint = taken.getsockopt_string(zmq.LAST_ENDPOINT)
    (tmp_path / "scans").mkdir()
    publish = {"daemon": endpoint, "live": "tcp://127.0.0.1:*"}
    live = {"daemon": "tcp://127.0.0.1:*", "live": endpoint}
    (tmp_path / "config.toml").write_text(
        f'[daemon]\ndatabase = "sqlite:///{tmp_path}/x.db"\nanalyser = "standin"\npublish = "{publish[section]}"\n'
        f'[folder]\npath = "{tmp_path}/scans"\n[live]\npublish = "{live[section]}"\n')
    try:
        proc = subprocess.run([sys.executable, "-m", "stmwatch.daemon", "run", "--config", str(tmp_path / "config.toml")],
                              capture_output=True, text=True, timeout=120)
    finally:
        taken.close(0)
        ctx.term()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert endpoint in proc.stderr and "in use" in proc.stderr
    if section == "live":
        assert "[live] publish" in proc.stderr
