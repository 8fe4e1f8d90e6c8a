"""Evaluation of a run's checkpoints as a child process of the local driver.

The child is `polypythia evaluate RUN_URI --steps ...`, the command an evaluation Job
runs in the cluster. Its output (lm-eval's progress bars included) goes to the run's
evaluation log, not the terminal, and its memory goes back when it exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from polypythia.local.processes import STOP_GRACE_S, die_with_parent, last_error, open_log


def storage_flags(storage: dict) -> list[str]:
    """`evaluate`'s storage options from a run config's ``storage`` block."""
    flags = ["--region", storage.get("region", "us-east-1")]
    if storage.get("endpoint"):
        flags += ["--endpoint", storage["endpoint"]]
        if not storage.get("secure", True):
            flags += ["--insecure"]
    return flags


class EvaluationChildren:
    """The `polypythia evaluate` children of one driver, each in its own session (Ctrl-C
    reaches the driver only) and told to die with the driver (even by SIGKILL); `stop`
    ends the running ones as the trainers are ended, so none outlives the driver."""

    def __init__(self, program: tuple[str, ...] = (sys.executable, "-m", "polypythia.cli")) -> None:
        self.program = program
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopping = False

    def run(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        """Run `polypythia <args>` to the end; raise RuntimeError with its error when it fails."""
        cmd = [*self.program, *args]
        with open_log(log_path, cmd) as log, self._lock:
            if self._stopping:
                raise RuntimeError("not started: the driver is stopping")
            child = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
            self._running.add(child)
        try:
            code = child.wait()
        finally:
            with self._lock:
                self._running.discard(child)
        if code != 0:
            raise RuntimeError(f"exit code {code}: {last_error(log_path)} (log: {log_path})")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to every running evaluation's process group, SIGKILL after ``grace_s``."""
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for child in running:
            _signal_group(child, signal.SIGTERM)
        for child in running:
            try:
                child.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()


def _signal_group(child: subprocess.Popen, sig: signal.Signals) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
