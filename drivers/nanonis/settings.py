"""Settings of the Nanonis TCP driver (``[nanonis]`` in config.toml)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class NanonisSettings:
    host: str = "127.0.0.1"  # the Nanonis PC
    port: int = 6501  # the programming interface's TCP port (6501-6504)
    poll_interval_s: float = 1.0  # how often to ask for scan status
    channel_indexes: list[int] = dataclasses.field(default_factory=lambda: [14, 0])  # Z, Current
    timeout_s: float = 10.0  # socket timeout

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port")
