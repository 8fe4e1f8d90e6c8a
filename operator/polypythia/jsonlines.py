"""JSON Lines input read by the CLIs (`spikes`/`outliers` tables, `data build` documents).

One reader so every command names a bad line the same way (``FILE:LINE: not valid JSON``)
and skips blank lines alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from polypythia.errors import UsageError


def json_lines(lines: Iterable[str], path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of ``path``; a line that is not JSON is a
    UsageError naming ``path:line``."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
