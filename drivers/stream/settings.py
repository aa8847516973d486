"""Settings of the ZeroMQ stream driver (``[stream]`` in config.toml)."""
from __future__ import annotations

import dataclasses

from stmwatch.drivers.wire import check_endpoint


@dataclasses.dataclass
class StreamSettings:
    endpoint: str = "tcp://127.0.0.1:5557"  # where scan lines/frames arrive
    socket: str = "sub"  # sub (connect to a publishing microscope) | pull
    bind: bool = False  # bind instead of connect
    topic: str = "stm"  # SUB topic prefix
    timeout_s: float = 30.0  # a scan with no message for this long is closed as partial
    segment_every_lines: int = 8  # segment a running scan every N new lines (live defects)
    max_message_bytes: int = 64 << 20  # largest message, and largest scan a header may declare (float32 bytes)
    max_open_scans: int = 4  # scans held at once: the one being acquired + finished ones not yet analysed
    max_channels: int = 32  # most channels a scan header may declare

    def check(self) -> None:
        if self.socket not in ("sub", "pull"):
            raise ValueError(f"socket must be 'sub' or 'pull', not {self.socket!r}")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if self.max_open_scans < 1 or self.max_channels < 1:
            raise ValueError("max_open_scans and max_channels must be at least 1")
        check_endpoint(self.endpoint, self.bind, "endpoint")
