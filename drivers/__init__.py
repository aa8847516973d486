"""Drivers: where scans come from (a watched folder, a ZeroMQ stream, the Nanonis TCP interface).

Every driver yields :class:`~stmwatch.drivers.scan.Scan` objects; ``sxm`` reads and writes files.
"""
from .scan import Channel, Scan
from .sxm import ScanReadError, read_sxm, write_sxm

__all__ = ["Channel", "Scan", "ScanReadError", "read_sxm", "write_sxm"]
