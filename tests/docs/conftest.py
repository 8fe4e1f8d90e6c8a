"""The docs and manifests tests use the generators in tools/ and the chart test kit."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO / "tools", REPO / "tests" / "chart"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
