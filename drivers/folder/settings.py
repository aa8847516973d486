"""Settings of the watched-folder driver (``[folder]`` in config.toml)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class FolderSettings:
    path: str = "~/stm-data"  # folder the microscope writes .sxm files into
    patterns: list[str] = dataclasses.field(default_factory=lambda: ["*.sxm"])  # glob patterns
    recursive: bool = True  # watch sub-folders too
    polling: bool = False  # poll instead of inotify (needed on SMB/NFS shares)
    poll_interval_s: float = 1.0  # polling period, seconds
    stable_s: float = 5.0  # a file whose size has not changed for this long is taken as it is
    backlog: bool = True  # on start, process files already there but not in the database
    follow_symlinks: bool = False  # take files whose real path (symlinks resolved) is outside the folder

    def check(self) -> None:
        if self.stable_s <= 0 or self.poll_interval_s <= 0:
            raise ValueError("stable_s and poll_interval_s must be positive")
        if not self.patterns:
            raise ValueError("patterns must name at least one glob pattern")
