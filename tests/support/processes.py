"""Ending the child processes the test helpers start (S3 server, Prometheus, operator)."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL when it has not exited after ``grace_s``; nothing when it has
    already ended (or was never started)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
