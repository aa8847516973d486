"""``stmwatch demo``: a simulated microscope, the daemon and the dashboard, then a query summary."""
from __future__ import annotations

import sys

from ._args import surface_key

HELP = "watch a simulated microscope: scans -> daemon -> database -> dashboard, then a summary"
DESCRIPTION = """Everything at once, with no instrument and no set-up.

A simulated microscope writes .sxm scans into a temporary folder at a steady pace (each file
written in pieces while it is 'scanned'; with --stream it streams them line by line over
ZeroMQ instead), the daemon analyses each with the shipped models, stores it in a SQLite database
in the same temporary folder (unless --db) and publishes overlays; the dashboard shows it live
(or one line per scan when the output is not a terminal). After --seconds the microscope stops,
the daemon finishes what it has and a query summary is printed."""


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the microscope runs (default 30)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds per scan (default 3)")
    parser.add_argument("--surface", default="si001h", type=surface_key, help="si001h | ge001 | tio2110 (default si001h)")
    parser.add_argument("--pixels", type=int, default=128, help="pixels per side (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scan")
    parser.add_argument("--stream", action="store_true", help="stream scans line by line instead of files")
    parser.add_argument("--db", metavar="URL", help="database URL (default: demo.db in the temporary folder)")
    parser.add_argument("--dir", metavar="DIR", help="working folder (default: a new temporary folder)")
    parser.add_argument("--no-dashboard", action="store_true", help="one line per scan instead of the dashboard")


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _microscope(args, config, stop, stream_endpoint: str | None) -> None:
    """The simulated microscope: one scan every ``args.interval`` s until ``stop`` is set."""
    import logging

    import numpy as np

    from stmwatch.models.sim.artefacts import Artefacts

    log = logging.getLogger("stmwatch.demo")
    rng = np.random.default_rng(args.seed)
    try:
        if stream_endpoint is None:
            from stmwatch.drivers.folder.sim import FolderSimulator

            from stmwatch.models.sim.simulate import scan_source

            sim = FolderSimulator(config.folder.path, scan_source(args.surface, args.seed, args.pixels),
                                  prefix=f"demo_{args.surface}")
            while not stop.is_set():
                # written in pieces over the scan time, as the acquisition PC does; a scan under way
                # when the demo ends is finished
                sim.write_scan(chunks=8, pause_s=args.interval / 8, artefacts=Artefacts.random(rng))
            return
        from stmwatch.drivers.stream.sim import StreamSimulator
        from stmwatch.models.sim.simulate import simulate_scan

        with StreamSimulator(stream_endpoint) as sim:
            if not sim.wait_for_subscriber(30):
                log.error("the daemon did not subscribe to %s", stream_endpoint)
                return
            i = 0
            while not stop.is_set():
                scan, _ = simulate_scan(args.surface, args.seed + i, pixels=(args.pixels, args.pixels),
                                        artefacts=Artefacts.random(rng))
                sim.send_scan(scan, f"demo-{i:04d}", line_rate=scan.shape[0] / args.interval,
                              surface=args.surface)
                i += 1
    except Exception:
        log.exception("the simulated microscope failed")


def _listen_like_the_dashboard(endpoints: list[str], stop) -> int:
    """Subscribe to ``endpoints`` as the dashboard does until ``stop``; the status heartbeats heard."""
    from stmwatch.daemon.dashboard import Feed, LiveState

    state, feed, heard = LiveState(), Feed(endpoints), 0
    try:
        while not stop.is_set():
            seen = state.status_at
            feed.poll(state, timeout_s=0.1)
            heard += state.status_at != seen
    finally:
        feed.close()
    return heard


def print_summary(console, database: str) -> None:
    """Totals by status, defects by label and the scans, from the database."""
    from rich.table import Table

    from stmwatch.daemon.db import Database

    with Database(database) as db:
        totals, counts, scans = db.summary(), db.counts(), db.scans()
    n = totals["ok"] + totals["partial"] + totals["failed"]
    console.print(f"\n[bold]stmwatch demo: {n} scans[/bold] ({totals['ok']} ok, {totals['partial']} partial, "
                  f"{totals['failed']} failed), {totals['defects']} defects")
    table = Table(title="defects by label", title_justify="left", min_width=30)
    table.add_column("label")
    table.add_column("n", justify="right")
    for row in counts:
        table.add_row(row["label"], str(row["n"]))
    console.print(table)
    table = Table(title="scans", title_justify="left")
    for column in ("id", "file", "status", "n_defects", "ms", "error"):
        table.add_column(column, overflow="fold")
    for row in scans[-15:]:
        table.add_row(str(row["id"]), row["path"].rsplit("/", 1)[-1], row["status"], str(row["n_defects"]),
                      f"{(row['timing_ms'] or {}).get('total', 0):.0f}", row["error"] or "")
    console.print(table)
    from stmwatch.daemon.dburl import ENV_VAR, mask_url, password_of

    shown = mask_url(database)  # never the password
    hint = f"{ENV_VAR}=... stmwatch query scans" if password_of(database) else f"stmwatch query scans --db '{database}'"
    console.print(f"database: {shown}\n  {hint}")


def run(args) -> int:
    import dataclasses
    import logging
    import tempfile
    import threading
    import time
    from pathlib import Path

    from rich.console import Console

    from stmwatch.daemon.config import Config
    from stmwatch.daemon.daemon import Daemon
    from stmwatch.models.load import make_analyser

    console = Console()
    log = logging.getLogger("stmwatch.demo")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stmwatch-demo-"))
    scans_dir = work / "scans"
    scans_dir.mkdir(parents=True, exist_ok=True)
    database = args.db or f"sqlite:///{work / 'demo.db'}"
    stream_endpoint = _free_endpoint() if args.stream else None
    config = Config()
    config.daemon = dataclasses.replace(config.daemon, driver="stream" if args.stream else "folder",
                                        database=database, publish="tcp://127.0.0.1:*", publish_png=args.stream)
    # the live side as `stmwatch run` has it: the status heartbeat (and live defects) the dashboard listens to
    config.live = dataclasses.replace(config.live, publish="tcp://127.0.0.1:*")
    config.folder = dataclasses.replace(config.folder, path=str(scans_dir), stable_s=max(2.0, args.interval))
    if stream_endpoint:
        config.stream = dataclasses.replace(config.stream, endpoint=stream_endpoint, timeout_s=max(5.0, 3 * args.interval))
    config.models = dataclasses.replace(config.models, surface=args.surface)
    config.check()

    console.print(f"stmwatch demo: a simulated {args.surface} microscope "
                  f"{'streaming to' if args.stream else 'writing into'} {stream_endpoint or scans_dir}, "
                  f"one {args.pixels} x {args.pixels} scan every {args.interval:g} s for {args.seconds:g} s")
    try:
        analyser = make_analyser(config.daemon.analyser, config)
    except (FileNotFoundError, ImportError) as exc:
        from stmwatch.models.standin import standin_analyser

        from rich.markup import escape

        console.print(f"[red]the shipped models could not be loaded ({escape(str(exc))}); "
                      "using the classical stand-in detector instead[/red]")
        analyser = standin_analyser(args.surface, config.preprocess)
    console.print(f"models: {analyser.model_versions}")

    use_dashboard = sys.stdout.isatty() and not args.no_dashboard
    sinks = []
    if not use_dashboard:
        sinks.append(lambda doc: print(f"{Path(doc.path).name}: {doc.status}, {len(doc.defects)} defects "
                                       f"{doc.counts}" + (f" ({doc.error})" if doc.error else ""), flush=True))
    daemon = Daemon(config, analyser=analyser, sinks=sinks)
    from stmwatch.daemon.db import DatabaseError

    try:
        daemon.start()
    except (DatabaseError, ValueError) as exc:  # the message names the database without its password
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from stmwatch.daemon.service import LiveSide

    live = LiveSide(daemon)  # publisher, live segmentation hook, heartbeat: as under `stmwatch run`
    endpoints = [daemon.publisher.endpoint] + ([live.publisher.endpoint] if live.publisher else [])
    stop_microscope, stop_view = threading.Event(), threading.Event()

    def heartbeat() -> None:
        while not stop_view.wait(0.25):
            live.beat(time.monotonic())

    threading.Thread(target=heartbeat, name="demo-heartbeat", daemon=True).start()
    microscope = threading.Thread(target=_microscope, args=(args, config, stop_microscope, stream_endpoint),
                                  name="demo-microscope", daemon=True)
    microscope.start()
    threading.Timer(args.seconds, stop_microscope.set).start()

    def finish() -> None:
        microscope.join(args.interval * 2 + 30)
        # the last scan is complete: let the daemon take it (nothing pending) and finish it
        time.sleep(0.5)
        daemon.wait_until_idle(config.folder.stable_s + 130)
        stop_view.set()

    finisher = threading.Thread(target=lambda: (stop_microscope.wait(), finish()), daemon=True)
    finisher.start()
    try:
        if use_dashboard:
            try:
                from stmwatch.daemon.dashboard import Dashboard

                Dashboard(database, endpoints, refresh_s=0.5, console=console).run(stop=stop_view)
            except ImportError:
                stop_view.wait()
        else:
            heard = _listen_like_the_dashboard(endpoints, stop_view)
            console.print(f"daemon heartbeat: {'seen' if heard else 'none'} ({heard} status messages on {endpoints[-1]})")
    except KeyboardInterrupt:
        stop_microscope.set()
        console.print("interrupted: finishing the scans in hand")
    finally:
        stop_microscope.set()
        finisher.join(180)
        daemon.stop(drain=True)
        live.close()
    if daemon.driver_error is not None:
        log.error("the driver stopped: %s", daemon.driver_error)
    print_summary(console, database)
    return 0
