"""``stmwatch bench stream``: how soon a defect is published after the line that completes it.

Simulated scans are acquired in real time (``--lines-per-s``, 20 by default) into the live
segmentation hook, exactly as the stream driver hands it lines (a worker thread segments while
lines keep coming; it skips states it cannot keep up with). The reference is the whole-frame
segmentation of each scan by the same segmenter: for each reference defect, the line that
completes it is the acquisition line holding its last covered row (its centroid ± the radius of
a disc of its area), and its delay is from that line's arrival to the publication of the live
defect within ``--match-nm`` of it. Reported: median and p95 delay in lines and in ms, how many
defects were published while the scan ran, extras (published live but not in the whole frame),
and the time of one segmentation pass.
"""
from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

HELP = "live-stream publish delay: line that completes a defect -> defect published (median, p95)"


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="FILE", help="config.toml ([models], [preprocess], [live])")
    parser.add_argument("--analyser", choices=("shipped", "standin"), default=None,
                        help="segmenter to use (default: [daemon] analyser; standin if the shipped weights are missing)")
    parser.add_argument("--surface", default=None, help="surface to simulate (default: [models] surface)")
    parser.add_argument("--scans", type=int, default=2, help="scans to stream (2)")
    parser.add_argument("--pixels", type=int, default=256, help="pixels per line and lines (256)")
    parser.add_argument("--defects", type=int, default=15, help="defects per scan (15)")
    parser.add_argument("--lines-per-s", type=float, default=20.0, help="line rate (20 lines/s)")
    parser.add_argument("--every-lines", type=int, default=None, help="override [live] every_lines")
    parser.add_argument("--match-nm", type=float, default=0.2, help="live and whole-frame defect are the same "
                        "within this distance (0.2 nm)")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _analyser(config, choice: str):
    """The analyser the daemon's live hook would run (``live.live_analyser``)."""
    from stmwatch.daemon.live import live_analyser

    config.daemon.analyser = choice
    try:
        return live_analyser(config), choice
    except (FileNotFoundError, OSError) as exc:
        if choice != "shipped":
            raise
        print(f"note: shipped models not available ({exc}); using the stand-in segmenter", file=sys.stderr)
        config.daemon.analyser = "standin"
        return live_analyser(config), "standin"


def stream_one(segmenter, scan, settings, line_period_s: float, match_px: float) -> dict:
    """Acquire ``scan`` line by line in real time into a threaded :class:`LiveSegmenter`."""
    from stmwatch.drivers.base import PartialScan
    from stmwatch.daemon.live import LiveSegmenter, radius_px
    from stmwatch.drivers.scan import Channel, Scan

    ny = scan.shape[0]
    reference = segmenter.segment(scan)
    running = Scan([Channel(c.name, c.unit, forward=np.full_like(c.forward, np.nan),
                            backward=np.full_like(c.backward, np.nan)) for c in scan.channels],
                   pixels=scan.pixels, range_m=scan.range_m, offset_m=scan.offset_m, angle_deg=scan.angle_deg,
                   direction=scan.direction, source=scan.source)
    published: list[tuple[dict, int, float]] = []
    live = LiveSegmenter(segmenter, settings, on_publish=lambda d, rows, t: published.append((d, rows, t)))
    rows = list(range(ny)) if scan.direction == "down" else list(range(ny - 1, -1, -1))
    arrival = np.zeros(ny)
    t0 = time.monotonic()
    try:
        for k, r in enumerate(rows):
            wait = t0 + k * line_period_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for dst, src in zip(running.channels, scan.channels):
                dst.forward[r], dst.backward[r] = src.forward[r], src.backward[r]
            arrival[k] = time.monotonic()
            live(PartialScan("bench", running, k + 1, [r]))
        live.wait_idle(300)
    finally:
        live.close()
    delays_lines, delays_ms, found = [], [], 0
    used = set()
    for d in reference:
        rad = radius_px(d.area_px)
        last_row = (d.row + rad - 0.5) if scan.direction == "down" else (ny - 1 - (d.row - rad + 0.5))
        k_complete = min(ny - 1, max(0, math.ceil(last_row - 1e-6)))
        hits = [(i, p) for i, p in enumerate(published) if math.hypot(p[0]["y_px"] - d.row, p[0]["x_px"] - d.col) <= match_px]
        if not hits:
            continue
        i, (item, rows_done, t_pub) = min(hits, key=lambda h: h[1][2])
        used.add(i)
        found += 1
        ms = (t_pub - arrival[k_complete]) * 1e3
        delays_ms.append(ms)
        delays_lines.append(ms / (line_period_s * 1e3))
    extras = sum(1 for i, p in enumerate(published) if i not in used and not any(
        math.hypot(p[0]["y_px"] - d.row, p[0]["x_px"] - d.col) <= 2 * match_px for d in reference))
    return {"reference": len(reference), "published_live": found, "extras": extras,
            "delays_lines": delays_lines, "delays_ms": delays_ms, "pass_ms": list(live.pass_ms),
            "passes": live.passes}


def run(args) -> int:
    from stmwatch.daemon.config import load_config
    from stmwatch.daemon.live import LiveSettings
    from stmwatch.models.sim.simulate import simulate_scan

    config = load_config(args.config)
    analyser, used = _analyser(config, args.analyser or config.daemon.analyser)
    settings = getattr(config, "live", None) or LiveSettings()
    if args.every_lines:
        settings.every_lines = args.every_lines
    surface = args.surface or config.models.surface
    period = 1.0 / args.lines_per_s
    results = []
    for i in range(args.scans):
        scan, _ = simulate_scan(surface, args.seed + i, pixels=(args.pixels, args.pixels), n_defects=args.defects,
                                direction="down" if i % 2 == 0 else "up")
        match_px = args.match_nm * 1e-9 / scan.pixel_size_m[0]
        print(f"scan {i + 1}/{args.scans}: {args.pixels} lines at {args.lines_per_s:g} lines/s, "
              f"{scan.direction} ...", file=sys.stderr, flush=True)
        results.append(stream_one(analyser.segmenter, scan, settings, period, match_px))

    def stats(key):
        values = [v for r in results for v in r[key]]
        return {"median": float(np.median(values)) if values else None,
                "p95": float(np.percentile(values, 95)) if values else None, "n": len(values)}

    out = {
        "segmenter": analyser.model_versions.get("segmenter"), "analyser": used, "surface": surface,
        "lines_per_s": args.lines_per_s, "pixels": args.pixels, "scans": args.scans,
        "every_lines": settings.every_lines,
        "reference_defects": sum(r["reference"] for r in results),
        "published_live": sum(r["published_live"] for r in results),
        "extras": sum(r["extras"] for r in results),
        "delay_lines": stats("delays_lines"), "delay_ms": stats("delays_ms"), "pass_ms": stats("pass_ms"),
        "passes": sum(r["passes"] for r in results),
    }
    target = out["delay_lines"]["median"] is not None and out["delay_lines"]["median"] <= 2.0
    out["target_median_le_2_lines"] = bool(target)
    out["target_p95_le_4_lines"] = bool(out["delay_lines"]["p95"] is not None and out["delay_lines"]["p95"] <= 4.0)
    if args.json:
        print(json.dumps(out))
        return 0
    dl, dm, pm = out["delay_lines"], out["delay_ms"], out["pass_ms"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"segmenter {out['segmenter']} ({used}), {surface}, {args.scans} scans of {args.pixels} lines "
          f"at {args.lines_per_s:g} lines/s, every {settings.every_lines} line(s)")
    print(f"defects published live: {out['published_live']} of {out['reference_defects']} "
          f"(whole-frame reference, within {args.match_nm:g} nm); extras {out['extras']}")
    print(f"publish delay after the completing line: median {fmt(dl['median'], '.2f')} lines "
          f"({fmt(dm['median'], '.0f')} ms), p95 {fmt(dl['p95'], '.2f')} lines ({fmt(dm['p95'], '.0f')} ms)")
    print(f"segmentation pass: median {fmt(pm['median'], '.1f')} ms, p95 {fmt(pm['p95'], '.1f')} ms, "
          f"{out['passes']} passes")
    print(f"target median <= 2 lines: {'met' if target else 'NOT met'}; "
          f"p95 <= 4 lines: {'met' if out['target_p95_le_4_lines'] else 'NOT met'}")
    return 0
