"""Settings of the Nanonis TCP driver (``[nanonis]`` in config.toml)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class NanonisSettings:
    host: str = "127.0.0.1"  # the Nanonis PC
    port: int = 6501  # the programming interface's TCP port (6501-6504)
    poll_interval_s: float = 1.0  # longest wait in Scan.WaitEndOfScan before checking for stop, s
    channel_indexes: list[int] = dataclasses.field(default_factory=list)  # buffer slots (0-23) to grab; [] = all
    timeout_s: float = 10.0  # socket timeout for one command, s

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port")
        if self.poll_interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError("poll_interval_s and timeout_s must be positive")
        if any(not 0 <= i <= 23 for i in self.channel_indexes):
            raise ValueError(f"channel_indexes {self.channel_indexes} must be buffer slots 0..23")
