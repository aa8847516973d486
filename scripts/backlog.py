#!/usr/bin/env python3
"""Memory over a long backlog: RSS of the daemon at scan 100 and at the last scan.

    python scripts/backlog.py --scans 1000                  # JSON summary; exit 1 if growth >= --max-growth-mb
    python scripts/backlog.py --scans 1000 --analyser shipped

Writes ``--scans`` distinct simulated ``.sxm`` files (64 x 64 pixels; variants of 20 simulated
scans, each with one pixel changed so every file has its own content hash) into a temporary folder,
runs the daemon in this process on it (folder driver, SQLite, overlays published on 127.0.0.1) and
records the resident set size (``/proc/self/statm``) after every stored scan. Also reports the
folder driver's memory of taken files (bounded: ``drivers/folder/acquisition.py`` MAX_TAKEN).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_backlog(folder: Path, n: int) -> None:
    from stmwatch.drivers.sxm import write_sxm
    from stmwatch.models.sim.simulate import simulate_scan

    bases = [simulate_scan("si001h", i, pixels=(64, 64), n_defects=3)[0] for i in range(20)]
    for i in range(n):
        scan = bases[i % len(bases)]
        frame = scan.channels[0].forward
        keep = frame[0, 0]
        frame[0, 0] = keep + (i + 1) * 1e-13  # a distinct file, the same scan to analyse
        write_sxm(scan, folder / f"scan_{i:05d}.sxm")
        frame[0, 0] = keep
        os.utime(folder / f"scan_{i:05d}.sxm", ns=(10**18 + i * 10**6, 10**18 + i * 10**6))  # backlog order


def backlog(n: int, analyser: str, workdir: Path) -> dict:
    from stmwatch.daemon.config import Config, DaemonSettings
    from stmwatch.daemon.daemon import Daemon
    from stmwatch.drivers.folder.settings import FolderSettings

    folder = workdir / "scans"
    folder.mkdir()
    write_backlog(folder, n)
    samples: list[float] = []
    config = Config(daemon=DaemonSettings(database=f"sqlite:///{workdir / 'b.db'}", publish="tcp://127.0.0.1:*",
                                          analyser=analyser),
                    folder=FolderSettings(path=str(folder), stable_s=1.0))
    daemon = Daemon(config, sinks=[lambda doc: samples.append(rss_mb())])
    t0 = time.monotonic()
    daemon.start()
    try:
        while len(samples) < n and time.monotonic() - t0 < 3600:
            time.sleep(0.5)
        daemon.wait_until_idle(60)
        taken = len(daemon.connection.tracker._taken)
        stats = daemon.pipeline.stats
        summary = {"scans": n, "analyser": analyser, "processed": len(samples), "ok": stats.ok,
                   "failed": stats.failed, "seconds": round(time.monotonic() - t0, 1)}
    finally:
        daemon.stop()
    at = lambda k: round(samples[min(k, len(samples)) - 1], 1)  # noqa: E731
    summary.update({"rss_mb_at_100": at(100), "rss_mb_at_last": at(n),
                    "rss_growth_mb_100_to_last": round(at(n) - at(100), 1),
                    "rss_mb_max": round(max(samples), 1), "taken_files_remembered": taken})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--analyser", default="standin", choices=["standin", "shipped"])
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="stmwatch-backlog-") as tmp:
        summary = backlog(args.scans, args.analyser, Path(tmp))
    summary["passed"] = summary["processed"] == args.scans and summary["rss_growth_mb_100_to_last"] < args.max_growth_mb
    print(json.dumps(summary, indent=1))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
