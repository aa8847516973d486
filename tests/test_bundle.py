"""Model bundles (models/bundle.py): round trip, used by process and the daemon, SIGHUP reload,
a corrupt bundle refused while the old models stay."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import types

import pytest
import torch

from stmwatch.daemon.cli import main
from stmwatch.models.bundle import BundleError, load_bundle, write_bundle
from stmwatch.models.fewshot.classifier import SUPPORT, WEIGHTS
from stmwatch.models.load import load_analyser
from stmwatch.models.preprocess import PreprocessSettings
from stmwatch.models.settings import ModelSettings
from stmwatch.models.sim.simulate import simulate_scan, write_example
from stmwatch.models.unet import UNet, UNetConfig, model_hash, save_checkpoint


def tiny_unet(path, seed: int):
    torch.manual_seed(seed)
    model = UNet(UNetConfig(width=4, depth=2))
    save_checkpoint(model, path)
    return model_hash(model)[:12]


def make_bundle(tmp_path, folder, seed: int = 0):
    digest = tiny_unet(tmp_path / f"unet{seed}.pt", seed)
    bundle = write_bundle(folder, "si001h", unet=tmp_path / f"unet{seed}.pt", classifier=WEIGHTS,
                          support=SUPPORT / "si001h", made_with={"seed": seed}, figures={"f1": 0.5},
                          card="# tiny\n")
    return bundle, digest


def test_bundle_round_trips_and_its_id_reaches_model_versions(tmp_path):
    bundle, digest = make_bundle(tmp_path, tmp_path / "b")
    again = load_bundle(tmp_path / "b")
    assert again.id == bundle.id and again.id.startswith("si001h-") and again.manifest["figures"] == {"f1": 0.5}
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == {"seed": 0}
    assert set(again.manifest["files"]) >= {"unet.pt", "fewshot.pt", "config.json", "CARD.md"}
    # the same files give the same id; other weights another one
    assert write_bundle(tmp_path / "c", "si001h", unet=tmp_path / "unet0.pt", classifier=WEIGHTS,
                        support=SUPPORT / "si001h", made_with={"seed": 0}, card="# tiny\n").id == bundle.id
    other, _ = make_bundle(tmp_path, tmp_path / "d", seed=1)
    assert other.id != bundle.id
    config = types.SimpleNamespace(models=ModelSettings(bundle=str(tmp_path / "b"), backend="torch"),
                                   preprocess=PreprocessSettings())
    analyser = load_analyser(config, "si001h")
    assert analyser.model_versions["bundle"] == bundle.id
    assert analyser.segmenter.version == digest  # the bundle's UNet, not the shipped one
    scan, _ = simulate_scan("si001h", 3, pixels=(64, 64))
    assert analyser.analyse(scan).model_versions["bundle"] == bundle.id


def test_process_models_uses_the_bundle_and_refuses_a_corrupt_one(tmp_path, capsys):
    make_bundle(tmp_path, tmp_path / "b")
    scan, truth = simulate_scan("si001h", 4, pixels=(64, 64))
    sxm = write_example(scan, truth, tmp_path / "s")
    assert main(["process", str(sxm), "--models", str(tmp_path / "b"), "--json", "--backend", "torch"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["file"] == str(sxm)
    data = bytearray((tmp_path / "b" / "unet.pt").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "b" / "unet.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="unet.pt is corrupt"):
        load_bundle(tmp_path / "b")
    assert main(["process", str(sxm), "--models", str(tmp_path / "b")]) == 1
    assert "unet.pt is corrupt" in capsys.readouterr().err
    (tmp_path / "b" / "bundle.json").unlink()
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path / "b")


def _recv(sock, first: str):
    """The next notify message that starts with ``first`` (STATUS lines may come between)."""
    while True:
        message = sock.recv(4096).decode().split("\n")
        if message[0].startswith(first) or not message[0].startswith("STATUS="):
            return message


def _versions(db, n, timeout=60.0):
    """The model_versions of the first ``n`` scans in the database (waits for them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as con:
                try:
                    rows = con.execute("SELECT model_versions FROM scans ORDER BY id").fetchall()
                except sqlite3.OperationalError:
                    rows = []
            if len(rows) >= n:
                return [json.loads(r[0]) for r in rows]
        time.sleep(0.2)
    raise AssertionError(f"{n} scans not in {db} after {timeout} s")


def test_daemon_loads_a_new_bundle_on_sighup_and_keeps_the_old_models_for_a_corrupt_one(tmp_path):
    bundle_dir = tmp_path / "bundle"
    first, _ = make_bundle(tmp_path, bundle_dir, seed=0)
    scans = tmp_path / "scans"
    scans.mkdir()
    db = tmp_path / "stmwatch.db"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[daemon]
driver = "folder"
database = "sqlite:///{db}"
publish = ""
[live]
publish = ""
[folder]
path = "{scans}"
stable_s = 0.5
[models]
surface = "si001h"
backend = "torch"
bundle = "{bundle_dir}"
test_time_flips = 1
""")

    def drop(i):
        scan, truth = simulate_scan("si001h", 40 + i, pixels=(64, 64))
        write_example(scan, truth, tmp_path / "tmp" / f"s{i}")
        os.replace(tmp_path / "tmp" / f"s{i}.sxm", scans / f"s{i}.sxm")

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(90)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "OMP_NUM_THREADS": "1"}
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen([sys.executable, "-m", "stmwatch.daemon", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _recv(sock, "READY")[0] == "READY=1"
        drop(0)
        assert _versions(db, 1)[0]["bundle"] == first.id
        second, _ = make_bundle(tmp_path, bundle_dir, seed=1)  # adapt rewrote the bundle in place
        proc.send_signal(signal.SIGHUP)
        assert _recv(sock, "RELOADING")[0] == "RELOADING=1"
        assert _recv(sock, "READY")[0] == "READY=1"
        drop(1)
        assert _versions(db, 2)[1]["bundle"] == second.id != first.id
        data = bytearray((bundle_dir / "unet.pt").read_bytes())
        data[-10] ^= 0xFF
        (bundle_dir / "unet.pt").write_bytes(bytes(data))  # a corrupt bundle: refused, the old models stay
        proc.send_signal(signal.SIGHUP)
        assert _recv(sock, "RELOADING")[0] == "RELOADING=1"
        assert _recv(sock, "READY")[0] == "READY=1"
        drop(2)
        assert _versions(db, 3)[2]["bundle"] == second.id
        proc.send_signal(signal.SIGTERM)
        assert _recv(sock, "STOPPING")[0] == "STOPPING=1"
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, err[-3000:]
    assert "reload failed" in err and "unet.pt is corrupt" in err
