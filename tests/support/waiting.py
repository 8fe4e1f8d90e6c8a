"""Polling for a state the system reaches on its own (the operator, Prometheus): one loop, one
failure message that says what was awaited and shows the log that explains why."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float,
    log: Callable[[], str] | None = None,
    interval: float = 0.25,
    log_name: str = "operator log",
) -> T:
    """Poll ``check`` until it returns something truthy and return that; otherwise fail the
    test naming ``what``, with the tail of ``log`` when one is given."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    tail = f"\n--- {log_name} ---\n{log()}" if log else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
