"""``stmwatch bench pipeline``: scan closed -> overlay published, through the daemon's pipeline.

A simulated ``--pixels``² scan (Z and current, forward and backward; ``--range-nm``, by default
the surface's model scale, so a 512² scan is a 512² 2-channel model image) is written as an
``.sxm`` file. Each of ``--scans`` runs hands its bytes, as the folder driver does once the file
is closed, to a :class:`~stmwatch.daemon.pipeline.Pipeline` with the analyser of the config and
the daemon's sinks (SQLite database in a temporary folder, then the ZeroMQ overlay publisher on
a local port); a subscriber stamps the overlay's arrival. Reported: that latency (median, p95),
and the raw inference it contains (the UNet with the configured backend and flips on the
prepared image, timed alone after each scan, in turns), and their ratio (pipeline overhead: reading,
preprocessing, components, classification, database, publishing). The driver's own wait for a
file to be stable (``[folder]``) is not included.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench_common import bench_scan, print_table, stats, timed

HELP = "scan closed -> overlay published (median, p95) for a 512² 2-channel scan, and overhead vs raw inference"


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="TOML", help="config file ([models], [preprocess], [daemon] analyser)")
    parser.add_argument("--pixels", type=int, default=512, help="scan pixels per side (512)")
    parser.add_argument("--range-nm", type=float, default=None, help="scan width in nm (default: model scale)")
    parser.add_argument("--scans", type=int, default=6, help="scans through the pipeline (6)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def measure(config, pixels: int = 512, range_nm: float | None = None, scans: int = 6) -> dict:
    import hashlib

    import zmq

    from stmwatch.daemon.db import Database
    from stmwatch.daemon.pipeline import Pipeline, config_version
    from stmwatch.daemon.publisher import OverlayPublisher, decode_overlay
    from stmwatch.drivers.base import Acquisition
    from stmwatch.drivers.sxm import write_sxm
    from stmwatch.models.load import make_analyser
    from stmwatch.models.preprocess import prepare
    from stmwatch.models.unet import flip_averaged_predict

    analyser = make_analyser(config.daemon.analyser, config)
    segmenter = analyser.segmenter
    scan = bench_scan(config.models.surface, pixels, range_nm)
    with tempfile.TemporaryDirectory(prefix="stmwatch-bench-") as tmp:
        path = Path(tmp) / "bench.sxm"
        write_sxm(scan, path)
        raw = path.read_bytes()
        db = Database(f"sqlite:///{Path(tmp) / 'bench.sqlite'}")
        publisher = OverlayPublisher("tcp://127.0.0.1:*")
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(publisher.endpoint)
        pipeline = Pipeline(analyser, [db.record, publisher], surface=config.models.surface,
                            config_version=config_version(config))
        pipeline.start()
        latencies, defects, raw_ms = [], [], []
        try:
            time.sleep(0.3)  # let the subscription reach the publisher
            for i in range(scans + 1):  # the first is a warm-up (backend sessions, caches)
                acq = Acquisition(path=f"{path}#{i}", content_hash=hashlib.sha256(raw + bytes([i % 256])).hexdigest(),
                                  source="folder", raw=raw)
                t0 = time.perf_counter()
                pipeline.submit(acq)
                if not sub.poll(120_000):
                    raise RuntimeError("no overlay published within 120 s")
                message, _ = decode_overlay(sub.recv_multipart())
                ms = (time.perf_counter() - t0) * 1e3
                if i:
                    latencies.append(ms)
                    defects.append(len(message["defects"]))
                    if hasattr(segmenter, "backend"):  # in turns with the pipeline: the same load on both
                        raw_ms.append(timed(lambda: flip_averaged_predict(
                            segmenter.last_prepared.image, segmenter.backend, segmenter.flips, segmenter.tile_px,
                            segmenter.tile_overlap_px, segmenter.batch_size)))
            pipeline.wait_idle(60)
        finally:
            pipeline.stop()
            sub.close(0)
            context.term()
            publisher.close()
            db.close()
    prepared = prepare(scan, segmenter.surface, config.preprocess)
    latency = stats(latencies)
    inference = stats(raw_ms)
    overhead = (latency["median"] / inference["median"]) if inference["median"] else None
    return {"latency_ms": latency, "raw_inference_ms": inference,
            "overhead_ratio": round(overhead, 3) if overhead else None,
            "backend": getattr(getattr(segmenter, "backend", None), "name", None),
            "flips": getattr(segmenter, "flips", None), "analyser": analyser.model_versions,
            "scan_px": [pixels, pixels], "model_px": list(prepared.image.shape[1:]),
            "channels": int(prepared.image.shape[0]), "defects": int(np.median(defects)) if defects else 0,
            "scans": scans}


def show(result: dict) -> None:
    lat, inf = result["latency_ms"], result["raw_inference_ms"]
    h, w = result["model_px"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print_table(
        f"Scan closed -> overlay published: {result['scan_px'][0]}² scan ({result['channels']}x{h}x{w} model input), "
        f"backend {result['backend']}, {result['flips']} flip(s), {result['scans']} scans",
        [("latency median (ms)", fmt(lat["median"])), ("latency p95 (ms)", fmt(lat["p95"])),
         ("raw inference median (ms)", fmt(inf["median"])),
         ("latency / raw inference", "-" if result["overhead_ratio"] is None else f"{result['overhead_ratio']:.2f}"),
         ("defects per scan", str(result["defects"]))])


def run(args) -> int:
    from stmwatch.daemon.config import load_config

    result = measure(load_config(args.config), args.pixels, args.range_nm, args.scans)
    if args.json:
        print(json.dumps(result))
    else:
        show(result)
    return 0
