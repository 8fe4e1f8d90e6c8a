"""Evaluation of a run's checkpoints as a child process of the local driver.

The child is `polypythia evaluate RUN_URI --steps ...`, the command an evaluation Job
runs in the cluster. Its output (lm-eval's progress bars included) goes to the run's
evaluation log, not the terminal, and its memory goes back when it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from polypythia.local.processes import last_error, open_log


def storage_flags(storage: dict) -> list[str]:
    """`evaluate`'s storage options from a run config's ``storage`` block."""
    flags = ["--region", storage.get("region", "us-east-1")]
    if storage.get("endpoint"):
        flags += ["--endpoint", storage["endpoint"]]
        if not storage.get("secure", True):
            flags += ["--insecure"]
    return flags


def evaluate_in_child(args: list[str], log_path: Path, env: dict[str, str]) -> None:
    """Run `polypythia <args>` to the end; raise RuntimeError with its error when it fails."""
    cmd = [sys.executable, "-m", "polypythia.cli", *args]
    with open_log(log_path, cmd) as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if code != 0:
        raise RuntimeError(f"exit code {code}: {last_error(log_path)} (log: {log_path})")
