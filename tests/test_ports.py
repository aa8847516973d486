"""Two copies on one PC: ``stmwatch run`` names the port that is taken and the setting that asks for it."""
from __future__ import annotations

import zmq

from stmwatch.daemon.cli import main
from stmwatch.daemon.ports import tcp_address


def test_tcp_address():
    assert tcp_address("tcp://127.0.0.1:5556") == ("127.0.0.1", 5556)
    assert tcp_address("tcp://*:5558") == ("0.0.0.0", 5558)
    assert tcp_address("tcp://localhost:7000") == ("127.0.0.1", 7000)
    assert tcp_address("tcp://127.0.0.1:*") is None and tcp_address("ipc:///tmp/x") is None


def test_run_says_which_port_is_taken_and_by_which_setting(tmp_path, capsys):
    context = zmq.Context()
    holder = context.socket(zmq.PUB)  # the first copy's live publisher
    try:
        port = holder.bind_to_random_port("tcp://127.0.0.1")
        (tmp_path / "scans").mkdir()
        config = tmp_path / "config.toml"
        config.write_text(f'[daemon]\npublish = "tcp://127.0.0.1:{port + 0}"\n[live]\npublish = "tcp://127.0.0.1:{port}"\n')
        rc = main(["run", "--config", str(config), "--watch", str(tmp_path / "scans"), "--db", f"sqlite:///{tmp_path / 'a.db'}"])
        err = capsys.readouterr().err
        assert rc == 2 and f"port {port} is set twice: [daemon] publish" in err and "[live] publish" in err
        config.write_text(f'[daemon]\npublish = "tcp://127.0.0.1:{port}"\n[live]\npublish = "tcp://127.0.0.1:*"\n')
        rc = main(["run", "--config", str(config), "--watch", str(tmp_path / "scans"), "--db", f"sqlite:///{tmp_path / 'a.db'}"])
        err = capsys.readouterr().err
        assert rc == 2 and f"port {port} is taken" in err and f"[daemon] publish = 'tcp://127.0.0.1:{port}'" in err
        assert not (tmp_path / "a.db").exists()  # said before anything was opened
    finally:
        holder.close(0)
        context.term()
