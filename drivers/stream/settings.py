"""Settings of the ZeroMQ stream driver (``[stream]`` in config.toml)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StreamSettings:
    endpoint: str = "tcp://127.0.0.1:5557"  # where scan lines/frames arrive
    socket: str = "sub"  # sub (connect to a publishing microscope) | pull
    bind: bool = False  # bind instead of connect
    topic: str = "stm"  # SUB topic prefix
    timeout_s: float = 30.0  # a scan with no message for this long is closed as partial
    segment_every_lines: int = 8  # segment a running scan every N new lines (live defects)

    def check(self) -> None:
        if self.socket not in ("sub", "pull"):
            raise ValueError(f"socket must be 'sub' or 'pull', not {self.socket!r}")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
