#!/usr/bin/env python3
"""``kill -9`` the daemon at many points of a backlog, restart it each time; then check that every
scan is stored exactly once and that the SQLite file is intact.

    python scripts/killtest.py --kills 24 --scans 60     # JSON summary; exit 1 on any loss/duplicate

A temporary folder gets ``--scans`` simulated scans before the first start (the backlog) and a
simulated microscope keeps writing more, each in pieces, while the daemon is killed and restarted
(``stmwatch run``, the stand-in analyser, overlays published on 127.0.0.1). Kill points are spread
over every phase of a run: during start-up (imports, backlog listing, database open), right after
the count of stored scans moved (a transaction just committed: the next scan is being read,
analysed, published or committed), and at random offsets in between. At the end a last daemon
drains everything; then each written file must have exactly one row (by path and content hash),
each row its defects once, and ``PRAGMA integrity_check`` must say ``ok``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def count(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    con = sqlite3.connect(db_path, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM scans").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stmwatch.daemon", "run", "--config", str(config)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=config.parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def wait_for(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def killtest(kills: int, scans: int, live_scans: int, seed: int, workdir: Path) -> dict:
    from stmwatch.daemon.db import Database
    from stmwatch.drivers.base import sha256
    from stmwatch.drivers.folder.sim import FolderSimulator
    from stmwatch.models.sim.simulate import scan_source

    rng = random.Random(seed)
    watch, db_path, config, log = workdir / "scans", workdir / "k.db", workdir / "config.toml", workdir / "daemon.log"
    watch.mkdir()
    config.write_text(f'[daemon]\ndriver = "folder"\ndatabase = "sqlite:///{db_path}"\n'
                      f'publish = "tcp://127.0.0.1:{free_port()}"\nanalyser = "standin"\nqueue_size = 4\n'
                      f'[folder]\npath = "{watch}"\nstable_s = 1.0\n[live]\npublish = ""\n')
    sim = FolderSimulator(watch, scan_source("si001h", seed=seed, pixels=64, n_defects=3))
    for _ in range(scans):
        sim.write_scan()
    stop = threading.Event()

    def microscope():  # more scans while the daemon dies and restarts, each written in pieces
        for _ in range(live_scans):
            if stop.wait(rng.uniform(0.5, 2.0)):
                return
            sim.write_scan(chunks=3, pause_s=0.1)

    writer = threading.Thread(target=microscope, daemon=True)
    writer.start()
    points = []
    try:
        for k in range(kills):
            proc = start(config, log)
            before = count(db_path)
            phase = ("start-up", "after a commit", "random")[k % 3]
            if phase == "start-up":
                time.sleep(rng.uniform(0.3, 4.0))
            elif phase == "after a commit":
                wait_for(lambda: count(db_path) > before or proc.poll() is not None, 60)
                time.sleep(rng.uniform(0.0, 0.15))
            else:
                wait_for(lambda: count(db_path) > before or proc.poll() is not None, 60)
                time.sleep(rng.uniform(0.0, 1.5))
            exited = proc.poll()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            points.append({"kill": k + 1, "phase": phase, "stored_before": before, "stored_at_kill": count(db_path),
                           "exited_by_itself": exited})
            if exited is not None:
                raise RuntimeError(f"the daemon exited by itself ({exited}): see {log}")
        writer.join(120)
        starts = log.read_text(errors="replace").count("stmwatch: folder")
        proc = start(config, log)  # the last one: until ready (its start line), then until all are stored
        ready = wait_for(lambda: log.read_text(errors="replace").count("stmwatch: folder") > starts, 120, 0.2)
        total = len(sim.written)
        ok = ready and wait_for(lambda: count(db_path) >= total, 300, 0.2)
        time.sleep(2.0)  # anything more would be a duplicate
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        stop.set()
    with Database(f"sqlite:///{db_path}", upgrade=False) as db:
        rows = db.scans()
        defects = db.defects()
    per_scan: dict[int, int] = {}
    for d in defects:
        per_scan[d["scan_id"]] = per_scan.get(d["scan_id"], 0) + 1
    by_path: dict[str, int] = {}
    for r in rows:
        by_path[r["path"]] = by_path.get(r["path"], 0) + 1
    written = {str(w.path): sha256(Path(w.path).read_bytes()) for w in sim.written}
    con = sqlite3.connect(db_path)
    integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.close()
    return {
        "kills": len(points), "scans_written": len(written), "rows": len(rows), "drained": ok,
        "missing": sorted(set(written) - set(by_path)), "duplicates": sorted(p for p, n in by_path.items() if n > 1),
        "unexpected": sorted(set(by_path) - set(written)),
        "wrong_hash": sorted(r["path"] for r in rows if written.get(r["path"]) not in (None, r["content_hash"])),
        "not_ok": sorted(r["path"] for r in rows if r["status"] != "ok"),
        "defects_mismatch": sum(per_scan.get(r["id"], 0) != r["n_defects"] for r in rows),
        "integrity_check": integrity, "daemon_exit": proc.returncode,
        "kill_phases": {p: sum(1 for x in points if x["phase"] == p) for p in ("start-up", "after a commit", "random")},
        "kills_while_storing": sum(1 for x in points if x["stored_at_kill"] > x["stored_before"]),
        "points": points,
    }


def passed(summary: dict) -> bool:
    return (summary["drained"] and not summary["missing"] and not summary["duplicates"] and not summary["unexpected"]
            and not summary["wrong_hash"] and not summary["not_ok"] and summary["defects_mismatch"] == 0
            and summary["integrity_check"] == "ok" and summary["daemon_exit"] == 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--scans", type=int, default=60, help="backlog written before the first start")
    parser.add_argument("--live-scans", type=int, default=20, help="scans the microscope writes meanwhile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="stmwatch-kill-"))
    t0 = time.monotonic()
    summary = killtest(args.kills, args.scans, args.live_scans, args.seed, workdir)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    summary["passed"] = passed(summary)
    summary["workdir"] = str(workdir)
    print(json.dumps(summary, indent=1))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
