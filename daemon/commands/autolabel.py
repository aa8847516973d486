"""``stmwatch autolabel``: defect masks from unlabelled scans (code in ``stmwatch.models.autolabel.command``)."""
from __future__ import annotations

from stmwatch.models.autolabel.command import DESCRIPTION, HELP, add_arguments, run

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]
