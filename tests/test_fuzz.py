"""A short run of scripts/fuzz.py (the .sxm reader and the stream decoder under mutated input), and
the inputs it found that escaped as the wrong exception before (issue 16, proof)."""
from __future__ import annotations

import json
import sys

import pytest

from stmwatch.drivers.stream.acquisition import StreamAssembler
from stmwatch.drivers.stream.protocol import ProtocolError, encode_scan_start, parse_message
from stmwatch.models.sim.simulate import simulate_scan

from .conftest import REPO


def test_a_short_fuzz_run_lets_only_the_documented_errors_out():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import fuzz
    finally:
        sys.path.pop(0)
    summary = fuzz.fuzz(300, seed=11, max_s=float("inf"), max_mb=500.0)
    assert summary["failing_cases"] == [] and summary["cases"] == 300


def start_header() -> dict:
    scan, _ = simulate_scan("si001h", 0, pixels=(24, 16))
    return json.loads(encode_scan_start(scan, "s")[1])


@pytest.mark.parametrize("frames", [
    [b"stm", json.dumps({**start_header(), "pixels": [10**400, 3]}).encode(), b""],  # OverflowError before
    [b"stm", json.dumps({**start_header(), "bias_v": 10**400}).encode(), b""],
    [b"stm", json.dumps({**start_header(), "pixels": [2**64, 3]}).encode(), b""],  # np.isfinite: TypeError
    [b"stm", b"[" * 100_000 + b"]" * 100_000, b""],  # RecursionError before
])
def test_found_by_fuzzing_bad_headers_are_protocol_errors(frames):
    with pytest.raises(ProtocolError):
        StreamAssembler(5.0).feed(parse_message(frames), 0.0)


def test_found_by_fuzzing_a_boolean_line_count_is_a_protocol_error():
    asm = StreamAssembler(5.0)
    asm.feed(parse_message([b"stm", json.dumps(start_header()).encode(), b""]), 0.0)
    lines = {"version": 1, "kind": "lines", "scan_id": "s", "row": 0, "count": True}
    with pytest.raises(ProtocolError):
        asm.feed(parse_message([b"stm", json.dumps(lines).encode(), b"\0" * (4 * 24 * 4)]), 0.0)
