"""One training run as a child process of the local driver.

Each run is `polypythia train --config FILE --ray-address ADDR`, the same command a
RayJob runs, so local and cluster runs share one code path. A child that dies
takes nothing else with it; its log file keeps the error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 30.0


@dataclass
class RunProcess:
    """A started trainer process and where its output goes."""

    name: str
    config_path: Path
    log_path: Path
    ray_address: str | None
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started_at: float = field(default_factory=time.time)

    def start(self) -> None:
        cmd = [sys.executable, "-m", "polypythia.cli", "train", "--config", str(self.config_path)]
        if self.ray_address:
            cmd += ["--ray-address", self.ray_address]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until exit
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        # A new session: Ctrl-C in the terminal reaches the driver only, which then
        # stops every child cleanly (SIGTERM, grace period) instead of all at once.
        self.process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        self.started_at = time.time()

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        """SIGTERM to the run's process group: the trainer flushes telemetry and exits."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """terminate(), then SIGKILL if it is still alive after grace_s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def error_summary(self, lines: int = 6) -> str:
        """The last meaningful lines of the log: what a user needs to see first."""
        if not self.log_path.exists():
            return "no log"
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        tail = [line for line in text if line.strip()][-lines:]
        return "\n".join(tail)


def write_config(path: Path, config: dict) -> Path:
    """Write a run config atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)
    return path
