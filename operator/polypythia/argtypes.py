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


def float_in(low: float, high: float, *, low_open: bool = True) -> Callable[[str], float]:
    """An argparse `type` accepting numbers in (low, high] (or [low, high] if not low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        if below or value > high or value != value:
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value

    return parse
