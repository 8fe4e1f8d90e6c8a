"""argparse types shared by the command modules (a bad flag exits 2 with its name)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse `type` accepting integers >= minimum; `why` explains the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            reason = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{reason}, got {value}")
        return value

    return parse
