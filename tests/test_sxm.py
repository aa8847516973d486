"""The .sxm reader and writer against independent truth: the real files' manifest (read by
nanonispy/pySPM), the bad files' known causes, and bit-exact round trips."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stmwatch.drivers.scan import Channel, Scan
from stmwatch.drivers.sxm import ScanReadError, read_sxm, read_sxm_bytes, sxm_bytes, write_sxm

from .conftest import BAD, REAL, bad_files, real_files


def raw_order(frame: np.ndarray, direction: str, backward: bool) -> np.ndarray:
    """Display frame → the order the file stores (and the manifest reports), written out here
    independently of the reader: 'up' scans store the bottom line first, backward lines run
    right to left."""
    out = frame
    if direction == "up":
        out = out[::-1]
    if backward:
        out = out[:, ::-1]
    return out


def manifest_entries(manifest):
    return {entry["file"]: entry for entry in manifest["files"]}


def test_every_real_file_is_in_the_manifest(manifest):
    assert {p.name for p in real_files()} == set(manifest_entries(manifest))
    assert len(real_files()) >= 7


@pytest.mark.parametrize("path", real_files(), ids=lambda p: p.name)
def test_real_file_matches_manifest(path, manifest):
    truth = manifest_entries(manifest)[path.name]
    scan = read_sxm(path)
    assert list(scan.pixels) == truth["pixels"]
    assert scan.range_m == pytest.approx(truth["range_m"], rel=1e-6)
    assert scan.offset_m == pytest.approx(truth["offset_m"], rel=1e-6, abs=1e-15)
    assert scan.angle_deg == pytest.approx(truth["angle_deg"])
    assert scan.direction == truth["direction"]
    assert scan.bias_v == pytest.approx(truth["bias_v"])

    frames = {(c.name, d): f for c in scan.channels for d, f in zip(c.directions, c.frames())}
    assert len(frames) == len(truth["channels"])
    nx, ny = truth["pixels"]
    for expected in truth["channels"]:
        frame = frames[(expected["name"], expected["direction"])]
        assert frame.shape == (ny, nx) and frame.dtype == np.float32
        raw = raw_order(frame, scan.direction, expected["direction"] == "backward")
        assert int(np.isnan(raw).sum()) == expected["nan_count"]
        assert int(np.isnan(raw).all(axis=1).sum()) == expected["nan_rows"]
        for key, value in (("first_value", raw[0, 0]), ("last_value", raw[-1, -1]),
                           ("nanmin", np.nanmin(raw)), ("nanmax", np.nanmax(raw))):
            if expected[key] is None or (isinstance(expected[key], float) and math.isnan(expected[key])):
                assert np.isnan(value)
            else:
                assert float(value) == pytest.approx(expected[key], rel=1e-6, abs=1e-30), key
        # the oracle summed in float32: allow its rounding, relative to the values' magnitude
        spread = max(abs(expected["nanmin"]), abs(expected["nanmax"]))
        assert float(np.nanmean(raw, dtype=np.float64)) == pytest.approx(expected["nanmean"], abs=1e-5 * spread)


def test_aborted_scan_is_partial_and_keeps_its_nan_rows():
    scan = read_sxm(REAL / "stm_moire_10nm_aborted.sxm")
    full = read_sxm(REAL / "stm_moire_10nm.sxm")
    assert scan.partial and not full.partial
    assert scan.nan_rows == 64  # the last 40 % of 160 lines
    # a 'down' scan acquires from the top: the missing lines are the bottom 64 rows of the display
    z = scan.topography().forward
    assert np.isnan(z[-64:]).all() and not np.isnan(z[:-64]).any()
    np.testing.assert_array_equal(z[:-64], full.topography().forward[:-64])


def test_up_scan_is_flipped_to_the_display_frame():
    """afm_gen4 is an 'up' scan: the display frame's top row is the file's last stored line."""
    path = REAL / "afm_gen4_A151216.sxm"
    scan = read_sxm(path)
    raw = path.read_bytes()
    start = raw.index(b"\x1a\x04", raw.index(b":SCANIT_END:")) + 2
    nx, ny = scan.pixels
    # Z forward, Z backward, then Input_4 forward: its first stored line is the display's bottom row
    stored = np.frombuffer(raw, ">f4", nx * ny, start + 2 * nx * ny * 4).reshape(ny, nx)
    np.testing.assert_array_equal(scan.channel("Input_4").forward[-1], stored[0])
    np.testing.assert_array_equal(scan.channel("Input_4").forward[0], stored[-1])


BAD_CAUSES = {
    "empty.sxm": "empty",
    "random_bytes.sxm": "not a Nanonis",
    "header_only.sxm": "truncated",
    "truncated_half_data.sxm": "truncated",
    "no_end_marker.sxm": "not terminated",
    "missing_scan_pixels.sxm": "SCAN_PIXELS",
    "garbled_pixels.sxm": "SCAN_PIXELS",
    "all_nan_data.sxm": "NaN",
}


def test_every_bad_file_has_a_known_cause():
    assert {p.name for p in bad_files()} == set(BAD_CAUSES)


@pytest.mark.parametrize("path", bad_files(), ids=lambda p: p.name)
def test_bad_file_raises_one_clear_error(path):
    with pytest.raises(ScanReadError) as info:
        read_sxm(path)
    message = str(info.value)
    assert str(path) in message
    assert BAD_CAUSES[path.name].lower() in message.lower()


@pytest.mark.parametrize("value", ["0.000E+0 0.000E+0", "-1.000E-8 1.000E-8", "1.000E-8 0.000E+0"])
def test_a_scan_range_that_is_not_positive_is_a_clear_error(value):
    """A header whose frame has no size (a broken converter, a corrupted file) is refused: read,
    every defect would sit at the frame centre and its scale warning would be nonsense."""
    raw = (REAL / "stm_moire_10nm.sxm").read_bytes()
    start = raw.index(b":SCAN_RANGE:\n") + len(b":SCAN_RANGE:\n")
    raw = raw[:start] + value.encode() + raw[raw.index(b"\n", start):]
    with pytest.raises(ScanReadError, match=r"bad\.sxm: SCAN_RANGE .* not a positive width and height"):
        read_sxm_bytes(raw, "bad.sxm")


def test_missing_file_is_a_scan_read_error(tmp_path):
    with pytest.raises(ScanReadError, match="cannot open"):
        read_sxm(tmp_path / "nope.sxm")


def test_truncated_file_reads_as_partial_when_allowed():
    """A file whose writer stopped mid-frame (the folder driver's 'stable but short' case)."""
    path = BAD / "truncated_half_data.sxm"
    scan = read_sxm(path, allow_truncated=True)
    full = read_sxm(REAL / "stm_moire_10nm.sxm")
    assert scan.partial
    # half the data: Z forward and Z backward complete, Current missing entirely
    np.testing.assert_array_equal(scan.channel("Z").forward, full.channel("Z").forward)
    assert np.isnan(scan.channel("Current").forward).all()


def test_crlf_header_and_reordered_keys_read_the_same(tmp_path):
    raw = (REAL / "stm_moire_10nm.sxm").read_bytes()
    end = raw.index(b":SCANIT_END:")
    header, rest = raw[:end], raw[end:]
    blocks = header.split(b"\n:")
    reordered = blocks[0] + b"".join(b"\n:" + b for b in reversed(blocks[1:]))
    crlf = reordered.replace(b"\n", b"\r\n") + rest
    a = read_sxm_bytes(raw, "a.sxm")
    b = read_sxm_bytes(crlf, "b.sxm")
    assert a.geometry() == b.geometry()
    for ca, cb in zip(a.channels, b.channels):
        np.testing.assert_array_equal(ca.forward, cb.forward)


# ---- writer → reader round trips -------------------------------------------------------------
def make_scan(nx, ny, direction, angle, channel_dirs, seed=0) -> Scan:
    rng = np.random.default_rng(seed)
    channels = []
    for i, dirs in enumerate(channel_dirs):
        frames = {d: rng.normal(size=(ny, nx)).astype(np.float32) for d in dirs}
        channels.append(Channel(name=f"Ch{i}", unit="m", index=i, **frames))
    return Scan(channels=channels, pixels=(nx, ny), range_m=(3e-8, 2e-8), offset_m=(1.5e-9, -2.5e-9),
                angle_deg=angle, direction=direction, bias_v=-1.8)


def assert_bit_exact(a: Scan, b: Scan):
    assert a.geometry() == b.geometry()
    assert a.bias_v == b.bias_v
    assert [(c.name, c.unit, c.directions) for c in a.channels] == [(c.name, c.unit, c.directions) for c in b.channels]
    for ca, cb in zip(a.channels, b.channels):
        for fa, fb in zip(ca.frames(), cb.frames()):
            np.testing.assert_array_equal(fa.view(np.uint32), fb.view(np.uint32))


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("angle", [0.0, 30.0, -135.1])
@pytest.mark.parametrize("channel_dirs", [[("forward", "backward")], [("forward",)], [("backward",)],
                                          [("forward", "backward"), ("forward",), ("backward",)]])
def test_round_trip_is_bit_exact(tmp_path, direction, angle, channel_dirs):
    scan = make_scan(17, 11, direction, angle, channel_dirs)
    scan.channels[0].frames()[0][3] = np.nan  # an unacquired line survives too
    path = write_sxm(scan, tmp_path / "scan.sxm")
    assert_bit_exact(scan, read_sxm(path))


def test_real_files_round_trip(tmp_path):
    for path in real_files():
        scan = read_sxm(path)
        again = read_sxm(write_sxm(scan, tmp_path / path.name))
        assert_bit_exact(scan, again)


def test_written_file_stores_up_scans_bottom_line_first(tmp_path):
    """Independent of the reader: the first stored line of an 'up' scan is the display's bottom row,
    and a backward frame's stored line runs right to left."""
    scan = make_scan(5, 4, "up", 0.0, [("forward", "backward")])
    raw = sxm_bytes(scan)
    start = raw.index(b"\x1a\x04", raw.index(b":SCANIT_END:")) + 2
    stored = np.frombuffer(raw, ">f4", offset=start).reshape(2, 4, 5)
    np.testing.assert_array_equal(stored[0, 0], scan.channels[0].forward[-1])
    np.testing.assert_array_equal(stored[1, 0], scan.channels[0].backward[-1, ::-1])


# ---- fuzzing: nothing but ScanReadError escapes ----------------------------------------------
SAMPLE = sxm_bytes(make_scan(8, 6, "down", 12.5, [("forward", "backward"), ("forward",)]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=0, max_value=len(SAMPLE)))
def test_truncation_never_escapes_as_another_error(cut):
    data = SAMPLE[:cut]
    try:
        read_sxm_bytes(data, "fuzz.sxm")
    except ScanReadError:
        pass
    else:
        assert cut == len(SAMPLE)


@pytest.mark.parametrize("value", ["n/a", "NaN", "-"])
def test_a_bias_that_is_not_a_number_leaves_the_bias_unknown_not_the_scan_lost(value, caplog):
    """The bias only informs the labels (a class's look at the scan's polarity): a header whose
    BIAS is written as text gives the scan with its bias unknown and one warning naming the file."""
    raw = (REAL / "stm_moire_10nm.sxm").read_bytes()
    start = raw.index(b":BIAS:\n") + len(b":BIAS:\n")
    raw = raw[:start] + value.encode() + raw[raw.index(b"\n", start):]
    with caplog.at_level("WARNING"):
        scan = read_sxm_bytes(raw, "odd_bias.sxm")
    assert scan.bias_v is None and scan.pixels == read_sxm(REAL / "stm_moire_10nm.sxm").pixels
    assert any("odd_bias.sxm" in r.getMessage() and "BIAS" in r.getMessage() for r in caplog.records)


HEADER_KEYS = ["SCAN_PIXELS", "SCAN_RANGE", "SCAN_OFFSET", "SCAN_ANGLE", "SCAN_DIR", "BIAS", "DATA_INFO"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(HEADER_KEYS),
       value=st.one_of(st.text(max_size=40), st.sampled_from(["", "0 0", "-3 4", "1e400 2", "nan nan",
                                                               "8", "8 6 4", "sideways"])),
       drop=st.booleans())
def test_fuzzed_header_values_give_scan_read_error_or_a_valid_scan(key, value, drop):
    header_end = SAMPLE.index(b":SCANIT_END:")
    text = SAMPLE[:header_end].decode("latin-1")
    start = text.index(f":{key}:\n") + len(key) + 3
    stop = text.index("\n:", start) if "\n:" in text[start:] else len(text)
    if drop:
        text = text[: start - len(key) - 3] + text[stop + 1:]
    else:
        text = text[:start] + value.replace(":", ";") + text[stop:]
    data = text.encode("latin-1", "replace") + SAMPLE[header_end:]
    try:
        scan = read_sxm_bytes(data, "fuzz.sxm")
    except ScanReadError as exc:
        assert "fuzz.sxm" in str(exc)
    else:
        nx, ny = scan.pixels
        assert all(f.shape == (ny, nx) for c in scan.channels for f in c.frames())


# ---- the writer's layout is a Nanonis controller's --------------------------------------------
def header_keys(raw: bytes) -> list[str]:
    text = raw[:raw.index(b":SCANIT_END:")].decode("latin-1")
    return [line[1:-1] for line in text.split("\n") if len(line) >= 2 and line[0] == line[-1] == ":"]


def test_written_header_has_the_keys_and_layout_of_a_nanonis_file():
    """Against the real Generic 5 file (written by a Nanonis controller): the same leading keys
    in the same order, DATA_INFO last then a blank line, tables without blank lines."""
    from stmwatch.models.sim.simulate import simulate_scan

    real = (REAL / "stm_gen5_au_mica_molecules.sxm").read_bytes()
    nanonis_keys = [k for k in header_keys(real) if ">" not in k]  # the controller's own keys
    scan, _ = simulate_scan("si001h", 5, pixels=(16, 16))
    raw = sxm_bytes(scan)
    ours = header_keys(raw)
    assert ours[:len(nanonis_keys) - 1] == nanonis_keys[:-1] and ours[-1] == nanonis_keys[-1] == "DATA_INFO"
    text = raw[:raw.index(b":SCANIT_END:")].decode("latin-1")
    assert text.endswith("\n\n") and real[:real.index(b":SCANIT_END:")].endswith(b"\n\n")
    zc = text.split(":Z-CONTROLLER:\n", 1)[1].split("\n:", 1)[0].split("\n")
    assert len(zc) == 2 and all(line.startswith("\t") and line.count("\t") == 6 for line in zc)
    # a scan with no header at all still has the keys other readers require
    bare = header_keys(sxm_bytes(make_scan(4, 3, "up", 0.0, [("forward", "backward")])))
    assert {"SCAN_TIME", "ACQ_TIME", "BIAS", "COMMENT", "SCAN_FILE"} <= set(bare)


def test_long_exact_numbers_stay_apart(tmp_path):
    scan = make_scan(5, 4, "down", -135.1, [("forward", "backward")])
    scan.offset_m = (-1.7106378718080704e-07, -1.1151228381664743e-07)
    scan.range_m = (2.5600000000000004e-08, 1.2345678901234567e-08)
    assert_bit_exact(scan, read_sxm(write_sxm(scan, tmp_path / "long.sxm")))
