#!/usr/bin/env python3
"""Fuzz the ``.sxm`` reader and the stream decoder: zero uncaught exceptions, bounded time and memory.

    python scripts/fuzz.py --n 10000            # half .sxm cases, half stream cases; JSON summary
    python scripts/fuzz.py --n 200 --seed 7     # (tests/test_fuzz.py runs a short one)

Each case mutates a valid input -- a real ``.sxm`` file from ``../shared/data/real`` or a simulated
one, or the stream messages of a simulated scan -- by random header edits (numbers replaced by
huge, negative, non-finite or junk values; keys dropped; DATA_INFO rows multiplied), truncations,
bit flips and huge declared sizes, then reads it: the ``.sxm`` reader
(:func:`stmwatch.drivers.sxm.read_sxm_bytes`, truncated files allowed or not) or the stream
decoder (:func:`~stmwatch.drivers.stream.protocol.parse_message` + a
:class:`~stmwatch.drivers.stream.acquisition.StreamAssembler` with the default ``[stream]`` caps).
The only exceptions allowed out are :class:`ScanReadError` and :class:`ProtocolError`. Memory is
Python's and numpy's allocations (``tracemalloc``; peak per case), time is wall time per case.
Exit status 1 when a case raised anything else, took over ``--max-s`` or allocated over ``--max-mb``.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"

HUGE_VALUES = ["16384 16384", "16383 16384", "8192 8192 8192", "99999999999 2", "-1 -1", "0 0", "nan nan",
               "inf 1", "1e308 1e308", "1e-320 3", "4096", "", "  ", "x y", "\x00\xff", "1,5 2,5", "3.5 7"]


# ---- .sxm cases -------------------------------------------------------------------------------
def sxm_seeds() -> list[bytes]:
    """Valid .sxm files to start from: the real ones (when ../shared is there) and simulated ones."""
    from stmwatch.drivers.sxm import sxm_bytes
    from stmwatch.models.sim.simulate import simulate_scan

    seeds = [p.read_bytes() for p in sorted(REAL.glob("*.sxm"))]
    for i, (pixels, direction) in enumerate([((48, 40), "down"), ((32, 64), "up")]):
        scan, _ = simulate_scan("si001h", i, pixels=pixels, direction=direction, n_defects=2)
        seeds.append(sxm_bytes(scan))
    return seeds


def mutate_sxm(raw: bytes, rng: random.Random) -> bytes:
    end = raw.find(b":SCANIT_END:")
    header, rest = (raw[:end], raw[end:]) if end > 0 else (raw, b"")
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["edit", "edit", "drop_key", "data_info", "truncate", "flip", "huge", "marker", "garbage"])
        if op in ("edit", "huge"):
            keys = list(re.finditer(rb":([A-Z_]+):\r?\n([^:]*)", header))
            if keys:
                m = rng.choice(keys)
                if op == "huge":
                    m = next((k for k in keys if k.group(1) == b"SCAN_PIXELS"), m)
                    value = rng.choice(["16384 16384", "16384 1", "12000 12000", "8192 16384"])
                else:
                    value = rng.choice(HUGE_VALUES + [str(rng.randint(-10**6, 10**6))])
                header = header[:m.start(2)] + value.encode("latin-1") + b"\n" + header[m.end(2):]
        elif op == "drop_key":
            keys = list(re.finditer(rb":[A-Z_]+:\r?\n[^:]*", header))
            if keys:
                m = rng.choice(keys)
                header = header[:m.start()] + header[m.end():]
        elif op == "data_info":
            m = re.search(rb"(:DATA_INFO:\r?\n[^\n]*\n)([^:]*)", header)
            if m:
                rows = [r for r in m.group(2).split(b"\n") if r.strip()] or [b"\t1\tZ\tm\tboth\t1\t0"]
                choice = rng.random()
                if choice < 0.4:
                    rows = rows * rng.choice([2, 16, 64, 512])
                elif choice < 0.7:
                    rows = [re.sub(rb"both|forward|backward", rng.choice([b"both", b"sideways", b""]), r) for r in rows]
                else:
                    rows = [r.replace(b"\t", b" ", rng.randint(0, 3)) for r in rows]
                header = header[:m.start(2)] + b"\n".join(rows) + b"\n" + header[m.end(2):]
        elif op == "marker":
            rest = rest.replace(b"\x1a\x04", rng.choice([b"", b"\x1a", b"\x1a\x04\x1a\x04"]), 1)
        elif op == "garbage":
            pos = rng.randint(0, len(header))
            header = header[:pos] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + header[pos:]
        data = header + rest
        if op == "truncate":
            data = data[:rng.randint(0, len(data))]
        elif op == "flip":
            buf = bytearray(data)
            for _ in range(rng.randint(1, 32)):
                if buf:
                    i = rng.randrange(len(buf)) if rng.random() < 0.5 else rng.randrange(min(len(buf), 4096))
                    buf[i] ^= 1 << rng.randrange(8)
            data = bytes(buf)
        end = data.find(b":SCANIT_END:")
        header, rest = (data[:end], data[end:]) if end > 0 else (data, b"")
    return header + rest


def run_sxm(raw: bytes, rng: random.Random) -> None:
    from stmwatch.drivers.sxm import ScanReadError, read_sxm_bytes

    try:
        read_sxm_bytes(raw, "fuzz.sxm", allow_truncated=rng.random() < 0.7)
    except ScanReadError:
        pass


# ---- stream cases ------------------------------------------------------------------------------
def stream_seeds() -> list[list[list[bytes]]]:
    """Message sequences of simulated scans: scan_start + lines + scan_end, and a whole frame."""
    from stmwatch.drivers.stream.protocol import encode_frame, encode_lines, encode_scan_end, encode_scan_start
    from stmwatch.models.sim.simulate import simulate_scan

    out = []
    for i, direction in enumerate(["down", "up"]):
        scan, _ = simulate_scan("si001h", 10 + i, pixels=(24, 16), direction=direction, n_defects=1)
        rows = range(16) if direction == "down" else range(15, -1, -1)
        out.append([encode_scan_start(scan, f"s{i}")] + [encode_lines(scan, f"s{i}", r) for r in rows]
                   + [encode_scan_end(f"s{i}")])
        out.append([encode_frame(scan, f"f{i}")])
    return out


def mutate_header(header: dict, rng: random.Random) -> dict:
    header = dict(header)
    key = rng.choice(list(header) + ["pixels", "channels", "row", "count", "version", "kind"])
    value = rng.choice([
        [4096, 4096], [16384, 1024], [2**31, 2], [-1, 5], [10**400, 3], [float("inf"), 2], 10**400, [0, 0], [1e308, 1], "big", None, [], {}, 10**12, -3, 2**63,
        True, 1.5, "nan", float("inf") if rng.random() < 0.1 else 7,
        [{"name": f"c{i}", "directions": ["forward", "backward"]} for i in range(rng.choice([16, 33, 1000]))],
        [{"name": "Z", "directions": ["sideways"]}], [{"name": 5}], ["x"], "scan_end", "frame", "lines"])
    header[key] = value
    return header


def mutate_messages(messages: list[list[bytes]], rng: random.Random) -> list[list[bytes]]:
    messages = [list(m) for m in messages]
    for _ in range(rng.randint(1, 3)):
        m = rng.choice(messages)
        op = rng.choice(["header", "header", "payload_cut", "payload_flip", "header_flip", "frames", "huge"])
        if len(m) < 2 and op != "frames":
            continue
        if op in ("header", "huge"):
            try:
                header = json.loads(m[1])
            except (ValueError, RecursionError):
                continue
            if op == "huge":
                header["pixels"] = [rng.choice([4096, 2048, 16384]), rng.choice([4096, 2048])]
                header["channels"] = [{"name": f"c{i}", "directions": ["forward", "backward"]}
                                      for i in range(rng.choice([8, 16, 64]))]
            else:
                header = mutate_header(header, rng)
            m[1] = json.dumps(header, allow_nan=True).encode()
        elif op == "payload_cut" and len(m) > 2:
            m[2] = m[2][:rng.randint(0, len(m[2]))]
        elif op == "payload_flip" and len(m) > 2 and m[2]:
            buf = bytearray(m[2])
            for _ in range(rng.randint(1, 16)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            m[2] = bytes(buf)
        elif op == "header_flip":
            buf = bytearray(m[1])
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            m[1] = bytes(buf)
        elif op == "frames":
            m[:] = rng.choice([m[:1], m + [b"extra"], [], m[:2], [b"stm", b"[" * 100_000 + b"]" * 100_000, b""]])
    if rng.random() < 0.2:
        rng.shuffle(messages)
    return messages


def run_stream(messages: list[list[bytes]], rng: random.Random) -> None:
    from stmwatch.drivers.stream.acquisition import StreamAssembler
    from stmwatch.drivers.stream.protocol import ProtocolError, parse_message
    from stmwatch.drivers.stream.settings import StreamSettings

    caps = StreamSettings()
    asm = StreamAssembler(5.0, max_bytes=caps.max_message_bytes, max_channels=caps.max_channels)
    for i, frames in enumerate(messages):
        try:
            for event in asm.feed(parse_message(frames, caps.max_message_bytes), float(i)):
                if getattr(event, "scan", None) is not None and hasattr(event, "content_hash"):
                    event.read()
        except ProtocolError:
            pass
    asm.expire(1e9)


# ---- the run -----------------------------------------------------------------------------------
def fuzz(n: int, seed: int = 0, max_s: float = 1.0, max_mb: float = 500.0, log=None) -> dict:
    """Run ``n`` cases (alternating .sxm and stream); the summary, with every failing case."""
    rng = random.Random(seed)
    sxm, streams = sxm_seeds(), stream_seeds()
    failures, times, peaks = [], [], []
    tracemalloc.start()
    try:
        for case in range(n):
            case_rng = random.Random(rng.getrandbits(64))
            kind = "sxm" if case % 2 == 0 else "stream"
            data = (mutate_sxm(case_rng.choice(sxm), case_rng) if kind == "sxm"
                    else mutate_messages(case_rng.choice(streams), case_rng))
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            error = None
            try:
                (run_sxm if kind == "sxm" else run_stream)(data, case_rng)
            except Exception as exc:  # the point: nothing else may escape
                error = f"{type(exc).__name__}: {exc}"
            dt_s = time.perf_counter() - t0
            peak_mb = (tracemalloc.get_traced_memory()[1] - base) / 2**20
            times.append(dt_s)
            peaks.append(peak_mb)
            if error or dt_s > max_s or peak_mb > max_mb:
                failures.append({"case": case, "kind": kind, "error": error, "seconds": round(dt_s, 3),
                                 "peak_mb": round(peak_mb, 1)})
                if log:
                    log(f"case {case} ({kind}): {failures[-1]}")
    finally:
        tracemalloc.stop()
    times.sort()
    return {"cases": n, "seed": seed, "failures": len(failures), "uncaught": sum(bool(f["error"]) for f in failures),
            "max_s": round(times[-1], 4) if times else 0.0, "p50_s": round(times[len(times) // 2], 5) if times else 0.0,
            "max_peak_mb": round(max(peaks, default=0.0), 1), "failing_cases": failures[:50]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-s", type=float, default=1.0, help="longest a case may take, seconds")
    parser.add_argument("--max-mb", type=float, default=500.0, help="most a case may allocate, MiB")
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.CRITICAL)  # the reader's warnings for every mutated file
    t0 = time.perf_counter()
    summary = fuzz(args.n, args.seed, args.max_s, args.max_mb, log=lambda m: print(m, file=sys.stderr))
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary, indent=1))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
