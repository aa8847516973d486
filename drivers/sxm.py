"""Read and write Nanonis ``.sxm`` files -- stmwatch's own reader, robust to what labs really have.

File layout: a text header of ``:KEY:`` lines, each followed by its value lines, ending with
``:SCANIT_END:``; then the bytes ``\\x1a\\x04``; then every frame as big-endian float32, channel by
channel in ``DATA_INFO`` order, forward before backward for a ``both`` channel. Each frame is
stored as acquired: for ``SCAN_DIR`` *up* the first stored row is the bottom of the image, and a
backward frame's rows run right to left. The reader returns frames in the display frame (row 0
at top, column 0 at left), as Gwyddion's Nanonis module does; the writer undoes that.

Anything wrong with a file raises :class:`ScanReadError` naming the file and the problem.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import os
from pathlib import Path

import numpy as np

from .scan import Channel, Scan

log = logging.getLogger(__name__)

HEADER_END = b":SCANIT_END:"
DATA_MARKER = b"\x1a\x04"
DATA_INFO_COLUMNS = ("Channel", "Name", "Unit", "Direction", "Calibration", "Offset")
MAX_HEADER_BYTES = 1 << 20  # a header larger than 1 MiB is not a Nanonis header
MAX_PIXELS = 16384  # per side; Nanonis scans are at most a few thousand pixels wide
MAX_CHANNELS = 256  # DATA_INFO rows; Nanonis records at most a few dozen signals
# A file cut short (its writer stopped) is read as a partial scan only when its data covers at
# least this fraction of what its header declares: the reader allocates what the header declares,
# so this bounds that to 1 / MIN_TRUNCATED_COVERAGE times the bytes the file holds (a 1 MB file
# claiming 16384 x 16384 pixels would otherwise take gigabytes).
MIN_TRUNCATED_COVERAGE = 0.125


class ScanReadError(ValueError):
    """A scan file could not be read; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = str(path) if path is not None else "<bytes>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def naming_the_file(path: str | os.PathLike, exc: BaseException) -> str:
    """``exc``'s message as one line naming ``path``: as it is when it names the file already (a
    :class:`ScanReadError` does), else ``"PATH: message"``."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


# ---- header ----------------------------------------------------------------------------------
def parse_header(text: str) -> dict[str, str]:
    """Header text (without ``:SCANIT_END:``) → ``{key: value}``, keys in file order.

    A key line is ``:KEY:``; the value is every line up to the next key line, with the
    line breaks kept (``\\n``) and trailing blank lines dropped. CRLF is accepted.
    """
    header: dict[str, str] = {}
    key: str | None = None
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if len(line) >= 2 and line.startswith(":") and line.endswith(":"):
            if key is not None:
                header[key] = "\n".join(lines).rstrip("\n ")
            key, lines = line[1:-1], []
        elif key is not None:
            lines.append(line)
    if key is not None:
        header[key] = "\n".join(lines).rstrip("\n ")
    return header


def _numbers(header: dict[str, str], key: str, count: int, kind=float, path=None, default=None):
    """The first ``count`` numbers of ``header[key]`` as ``kind`` (float or int), or ``default``
    when the key is missing; anything else is a :class:`ScanReadError` quoting the value."""
    if key not in header:
        if default is not None:
            return default
        raise ScanReadError(path, f"header has no {key}")
    parts = header[key].split()[:count]
    problem = ScanReadError(path, f"{key} is not {count} finite number(s): {header[key].strip()!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise problem from None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise problem
    if kind is int:
        if any(v != int(v) for v in values):
            raise ScanReadError(path, f"{key} is not {count} integer(s): {header[key].strip()!r}")
        return [int(v) for v in values]
    return values


def parse_data_info(value: str, path=None) -> list[dict[str, str]]:
    """The ``DATA_INFO`` table → one dict per channel with the keys of :data:`DATA_INFO_COLUMNS`."""
    if value.count("\n") > MAX_CHANNELS + 8:  # checked before splitting a megabyte of rows
        raise ScanReadError(path, f"DATA_INFO lists more than {MAX_CHANNELS} channels")
    rows = [line.strip().split("\t") for line in value.split("\n") if line.strip()]
    if not rows:
        raise ScanReadError(path, "DATA_INFO is empty")
    columns = [c.strip() for c in rows[0]]
    if "Name" not in columns or "Direction" not in columns:
        raise ScanReadError(path, f"DATA_INFO has no Name/Direction columns: {rows[0]}")
    channels = []
    for row in rows[1:]:
        if len(row) != len(columns):
            raise ScanReadError(path, f"DATA_INFO row has {len(row)} fields, expected {len(columns)}: {row}")
        entry = {c: v.strip() for c, v in zip(columns, row)}
        if entry["Direction"] not in ("both", "forward", "backward"):
            raise ScanReadError(path, f"DATA_INFO direction {entry['Direction']!r} is not both/forward/backward")
        channels.append(entry)
    if not channels:
        raise ScanReadError(path, "DATA_INFO lists no channels")
    return channels


def split_file(raw: bytes, path=None) -> tuple[dict[str, str], int]:
    """Split a file's bytes into its parsed header and the offset where the data starts."""
    if not raw:
        raise ScanReadError(path, "file is empty")
    if not raw.lstrip().startswith(b":"):
        raise ScanReadError(path, "not a Nanonis .sxm file (no ':KEY:' header at the start)")
    end = raw.find(HEADER_END, 0, MAX_HEADER_BYTES)
    if end < 0:
        raise ScanReadError(path, "header is not terminated (no :SCANIT_END:): file truncated or not .sxm")
    marker = raw.find(DATA_MARKER, end)
    if marker < 0:
        raise ScanReadError(path, "no data marker \\x1a\\x04 after :SCANIT_END: (file truncated in the header)")
    return parse_header(raw[:end].decode("latin-1")), marker + len(DATA_MARKER)


def frame_count(info: list[dict[str, str]]) -> int:
    return sum(2 if c["Direction"] == "both" else 1 for c in info)


def expected_size(path: str | os.PathLike) -> int | None:
    """Total file size in bytes that a file's header implies, or ``None`` if the header is not
    complete yet (used by the folder driver to tell a finished file from one still being written)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(MAX_HEADER_BYTES)
        header, start = split_file(head, path)
        nx, ny = _numbers(header, "SCAN_PIXELS", 2, int, path)
        info = parse_data_info(header.get("DATA_INFO", ""), path)
    except (ScanReadError, OSError):
        return None
    return start + frame_count(info) * nx * ny * 4


# ---- orientation -----------------------------------------------------------------------------
def stored_to_display(frame: np.ndarray, scan_dir: str, backward: bool) -> np.ndarray:
    """Flip a frame between stored (acquisition) order and the display frame. Its own inverse."""
    if scan_dir == "up":
        frame = frame[::-1, :]
    if backward:
        frame = frame[:, ::-1]
    return frame


# ---- reading ---------------------------------------------------------------------------------
def _parse_datetime(header: dict[str, str]) -> dt.datetime | None:
    date, time = header.get("REC_DATE", "").strip(), header.get("REC_TIME", "").strip()
    for fmt in ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M"):
        try:
            return dt.datetime.strptime(f"{date} {time}", fmt)
        except ValueError:
            pass
    return None


def read_sxm_bytes(raw: bytes, path: str | os.PathLike | None = None, allow_truncated: bool = False) -> Scan:
    """Parse the bytes of a ``.sxm`` file (see :func:`read_sxm`)."""
    header, start = split_file(raw, path)
    nx, ny = _numbers(header, "SCAN_PIXELS", 2, int, path)
    if not (0 < nx <= MAX_PIXELS and 0 < ny <= MAX_PIXELS):
        raise ScanReadError(path, f"SCAN_PIXELS {nx} x {ny} is not between 1 and {MAX_PIXELS} per side")
    range_m = tuple(_numbers(header, "SCAN_RANGE", 2, float, path))
    if not (range_m[0] > 0 and range_m[1] > 0):  # every position and the model scale divide by it
        raise ScanReadError(path, f"SCAN_RANGE {range_m[0]:g} x {range_m[1]:g} m is not a positive width and height")
    offset_m = tuple(_numbers(header, "SCAN_OFFSET", 2, float, path, default=[0.0, 0.0]))
    (angle,) = _numbers(header, "SCAN_ANGLE", 1, float, path, default=[0.0])
    scan_dir = header.get("SCAN_DIR", "down").strip().lower() or "down"
    if scan_dir not in ("up", "down"):
        raise ScanReadError(path, f"SCAN_DIR is {scan_dir!r}, not up or down")
    bias = None
    if header.get("BIAS", "").strip():
        try:
            (bias,) = _numbers(header, "BIAS", 1, float, path)
        except ScanReadError as exc:  # the bias only informs the labels: the scan is read without it
            log.warning("%s; the sample bias is taken as unknown", exc)
    if "DATA_INFO" not in header:
        raise ScanReadError(path, "header has no DATA_INFO (channel list)")
    info = parse_data_info(header["DATA_INFO"], path)

    n_frames = frame_count(info)
    need = n_frames * nx * ny * 4
    have = len(raw) - start
    if have > need:
        log.warning("%s: %d bytes after the data that the header implies; ignored", path, have - need)
    if have < need and not allow_truncated:
        raise ScanReadError(
            path, f"data truncated: {have} bytes after the header, header implies {need} "
            f"({n_frames} frames of {nx} x {ny} float32)")
    if have < 4:
        raise ScanReadError(path, "every pixel is NaN: the scan was stopped before its first line (no data)")
    if have < need * MIN_TRUNCATED_COVERAGE:  # checked before allocating what the header declares
        raise ScanReadError(
            path, f"data truncated: {have} bytes after the header cover {100 * have / need:.3g} % of the "
            f"{need} the header declares ({n_frames} frames of {nx} x {ny} float32); a file holding "
            f"less than {100 * MIN_TRUNCATED_COVERAGE:g} % is refused")
    # a file cut short (its writer stopped) keeps what was written; the rest is NaN, as never acquired
    values = min(have, need) // 4
    data = np.full(n_frames * ny * nx, np.nan, dtype=np.float32)
    data[:values] = np.frombuffer(raw, dtype=">f4", count=values, offset=start)
    data = data.reshape(n_frames, ny, nx)
    if np.isnan(data).all():
        raise ScanReadError(path, "every pixel is NaN: the scan was stopped before its first line")

    channels, k = [], 0
    for entry in info:
        dirs = ("forward", "backward") if entry["Direction"] == "both" else (entry["Direction"],)
        frames = {}
        for d in dirs:
            frames[d] = np.ascontiguousarray(stored_to_display(data[k], scan_dir, d == "backward"))
            k += 1
        try:
            index = int(entry.get("Channel", "0"))
        except ValueError:
            index = 0
        channels.append(Channel(
            name=entry["Name"], unit=entry.get("Unit", ""), index=index,
            calibration=entry.get("Calibration", "1.000E+0"), offset=entry.get("Offset", "0.000E+0"),
            **frames))
    return Scan(
        channels=channels, pixels=(nx, ny), range_m=range_m, offset_m=offset_m, angle_deg=angle,
        direction=scan_dir, bias_v=bias, acquired=_parse_datetime(header),
        source=Path(path) if path is not None else None, header=header)


def read_sxm(path: str | os.PathLike, allow_truncated: bool = False) -> Scan:
    """Read a Nanonis ``.sxm`` file into a :class:`Scan` (frames in the display frame).

    Raises :class:`ScanReadError` for any unreadable file (empty, truncated, bad header, no data);
    a scan stopped early reads fine, with its missing lines NaN and ``scan.partial`` True.
    ``allow_truncated`` reads a file whose data is cut short (a writer that stopped) as a partial
    scan, the missing values NaN, instead of raising.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ScanReadError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        return read_sxm_bytes(raw, path, allow_truncated)
    except ScanReadError:
        raise
    except Exception as exc:  # last line of defence: no other exception type escapes the reader
        raise ScanReadError(path, f"unreadable ({type(exc).__name__}: {exc})") from exc


# ---- writing ---------------------------------------------------------------------------------
# The header keys in the order a Nanonis SPM controller writes them (checked against the real
# Generic 4 and Generic 5 files in shared/data/real/); every other key of ``scan.header`` follows
# them in its own order, and DATA_INFO comes last, followed by one blank line (nanonispy drops the
# last three header lines, so that blank line is required).
NANONIS_KEY_ORDER = (
    "NANONIS_VERSION", "SCANIT_TYPE", "REC_DATE", "REC_TIME", "REC_TEMP", "ACQ_TIME", "SCAN_PIXELS",
    "SCAN_FILE", "SCAN_TIME", "SCAN_RANGE", "SCAN_OFFSET", "SCAN_ANGLE", "SCAN_DIR", "BIAS",
    "Z-CONTROLLER", "COMMENT",
)
Z_CONTROLLER_COLUMNS = ("Name", "on", "Setpoint", "P-gain", "I-gain", "T-const")


def nanonis_number(value: float, digits: int, exact: bool = True) -> str:
    """``value`` as Nanonis writes numbers (``2.000000E-9``: ``digits`` decimals, upper-case E, no
    leading zero in the exponent); ``exact``: with more decimals where needed so that it reads back
    to the same float (a scan written and read again keeps its exact geometry)."""
    value = float(value)
    for d in range(digits, 18 if exact else digits + 1):
        mantissa, exponent = f"{value:.{d}E}".split("E")
        text = f"{mantissa}E{int(exponent):+d}"
        if float(text) == value or not exact:
            return text
    return repr(value)


def nanonis_columns(texts, width: int) -> str:
    """Right-aligned fields of ``width`` characters as in Nanonis headers, always at least one
    space apart (a long exact number must not run into its neighbour)."""
    return "".join(" " * max(1, width - len(t)) + t for t in texts)


def z_controller_table(setpoint: str, name: str = "log Current", on: bool = True,
                       p_gain: str = "n/a", i_gain: str = "n/a", t_const: str = "n/a") -> str:
    """A ``Z-CONTROLLER`` header value as Nanonis writes it: a tab-led column row and one value
    row (``setpoint`` with its unit, e.g. ``"5.000E-11 A"``; gains that are not known: ``n/a``)."""
    values = (name, "1" if on else "0", setpoint, p_gain, i_gain, t_const)
    return "\t" + "\t".join(Z_CONTROLLER_COLUMNS) + "\n\t" + "\t".join(values)


def z_controller(header: dict[str, str]) -> dict[str, str]:
    """The ``Z-CONTROLLER`` table of a header as ``{column: value}`` (``{}`` when there is none or
    it cannot be read), e.g. ``{"Name": "log Current", "Setpoint": "5.000E-11 A", ...}``."""
    rows = [line.strip("\t ").split("\t") for line in header.get("Z-CONTROLLER", "").split("\n") if line.strip()]
    if len(rows) < 2 or len(rows[0]) != len(rows[1]):
        return {}
    return {k.strip(): v.strip() for k, v in zip(rows[0], rows[1])}


def _table(value: str) -> str:
    """A tab-separated table value without blank lines, each row led by a tab (as Nanonis writes
    it; a blank line inside the table breaks nanonispy and makes Gwyddion warn)."""
    return "\n".join("\t" + line.strip("\t ") for line in value.split("\n") if line.strip())


def sxm_bytes(scan: Scan) -> bytes:
    """Serialise a :class:`Scan` as ``.sxm`` bytes that :func:`read_sxm_bytes` reads back exactly,
    laid out as a Nanonis controller writes them (keys of :data:`NANONIS_KEY_ORDER` first,
    numbers as Nanonis formats them, ``DATA_INFO`` last), so that nanonispy and Gwyddion read them.

    The geometry keys, ``BIAS`` and ``DATA_INFO`` are written from the scan's own fields; every other
    key of ``scan.header`` is kept. ``SCAN_TIME`` (seconds per line, forward and backward) and
    ``ACQ_TIME`` (seconds for the scan) come from ``scan.header``; a scan that does not carry them
    gets ``0`` (not recorded), since other readers require the keys; ``REC_TEMP`` not given is
    290 K, Nanonis's own value when no temperature input is configured.
    """
    nx, ny = scan.pixels
    stamp = scan.acquired or dt.datetime(2000, 1, 1)
    given = {k: v for k, v in scan.header.items() if k not in ("SCANIT_END", "DATA_INFO")}
    header: dict[str, str] = {
        "NANONIS_VERSION": "2",
        "SCANIT_TYPE": "              FLOAT            MSBFIRST",
        "REC_DATE": stamp.strftime(" %d.%m.%Y"),
        "REC_TIME": stamp.strftime("%H:%M:%S"),
        "REC_TEMP": "      290.0000000000",  # what Nanonis writes when no temperature input is set
        "ACQ_TIME": f"{0.0:12.1f}",
        "SCAN_FILE": scan.source.name if scan.source else "",
        "SCAN_TIME": nanonis_columns([nanonis_number(0.0, 3)] * 2, 21),
        "COMMENT": "",
    }
    header.update(given)
    if scan.acquired is not None:
        header["REC_DATE"], header["REC_TIME"] = stamp.strftime(" %d.%m.%Y"), stamp.strftime("%H:%M:%S")
    header.update({
        "SCAN_PIXELS": nanonis_columns([str(nx), str(ny)], 10),
        "SCAN_RANGE": nanonis_columns([nanonis_number(v, 6) for v in scan.range_m], 22),
        "SCAN_OFFSET": nanonis_columns([nanonis_number(v, 6) for v in scan.offset_m], 21),
        "SCAN_ANGLE": nanonis_columns([nanonis_number(scan.angle_deg, 3)], 20),
        "SCAN_DIR": scan.direction,
    })
    if scan.bias_v is not None:
        header["BIAS"] = nanonis_columns([nanonis_number(scan.bias_v, 3)], 20)
    else:
        header.pop("BIAS", None)
    for key in ("Z-CONTROLLER", "Multipass-Config"):
        if key in header:
            header[key] = _table(header[key])
    rows = ["\t" + "\t".join(DATA_INFO_COLUMNS)]
    for ch in scan.channels:
        direction = "both" if len(ch.directions) == 2 else ch.directions[0]
        rows.append("\t" + "\t".join([str(ch.index), ch.name, ch.unit, direction, ch.calibration, ch.offset]))
    ordered = {k: header[k] for k in NANONIS_KEY_ORDER if k in header}
    ordered.update({k: v for k, v in header.items() if k not in ordered})
    ordered["DATA_INFO"] = "\n".join(rows) + "\n"
    text = "".join(f":{key}:\n{value}\n" for key, value in ordered.items())
    frames = [stored_to_display(f, scan.direction, d == "backward")
              for ch in scan.channels for d, f in zip(ch.directions, ch.frames())]
    data = np.stack(frames).astype(">f4").tobytes()
    return text.encode("latin-1", errors="replace") + HEADER_END + b"\n\n\n" + DATA_MARKER + data


def write_sxm(scan: Scan, path: str | os.PathLike) -> Path:
    """Write ``scan`` to ``path`` (atomically: a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(sxm_bytes(scan))
    os.replace(tmp, path)
    return path
