"""One training run as a child process of the local driver.

Each run is `polypythia train --config FILE --ray-address ADDR`, the same command a
RayJob runs, so local and cluster runs share one code path. A child that dies
takes nothing else with it; its log file keeps the error.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

STOP_GRACE_S = 30.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for the driver's children: SIGTERM when the driver dies, even by
    SIGKILL, so a rerun never meets an orphan trainer still writing the run (Linux;
    elsewhere the run's lease refuses the second writer). Made in the driver, so the
    child can tell that the driver died between fork and ``prctl`` and end at once."""
    parent = os.getpid()
    if not sys.platform.startswith("linux"):
        return lambda: None
    import ctypes

    # Loaded here, not in the child: dlopen after fork in a threaded driver may deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the driver is already gone: no signal will come
            os._exit(128 + signal.SIGTERM)

    return arm


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
    no_ray: bool = False  # `train --no-ray`: one worker in the child itself, no Ray start-up
    allow_changes: bool = False  # `train --allow-changes`: config drift accepted and recorded

    def start(self) -> None:
        cmd = [sys.executable, "-m", "polypythia.cli", "train", "--config", str(self.config_path)]
        if self.no_ray:
            cmd += ["--no-ray"]
        elif self.ray_address:
            cmd += ["--ray-address", self.ray_address]
        if self.allow_changes:
            cmd += ["--allow-changes"]
        log = open_log(self.log_path, cmd)
        # A new session: Ctrl-C in the terminal reaches the driver only, which then
        # stops every child cleanly (SIGTERM, grace period) instead of all at once.
        self.process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
            preexec_fn=die_with_parent(),
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

    def error_summary(self) -> str:
        """The exception that ended the run, in one line, and where the full log is."""
        return f"{last_error(self.log_path)} (log: {self.log_path})"


def open_log(log_path: Path, cmd: list[str]) -> BinaryIO:
    """The child's log, opened for appending after a `=== <time> <command>` line (the
    line bench_demo reads a run's start time from)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the caller hands it to the child
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
    log.flush()
    return log


ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b.*"
)


def last_error(log_path: Path) -> str:
    """The trainer's own error (its closing JSON line), else the last exception line."""
    if not log_path.exists():
        return "no log"
    lines = [ANSI.sub("", line) for line in log_path.read_text(errors="replace").splitlines()]
    for line in reversed(lines):
        if line.startswith("{") and '"error"' in line:
            try:
                error = json.loads(line).get("error")
            except ValueError:
                continue
            if error:
                found = [e for e in error.splitlines() if EXCEPTION_LINE.match(e.strip())]
                return (found[-1] if found else error.splitlines()[-1]).strip()
    for line in reversed(lines):
        text = re.sub(r"^\(\w+ pid=\d+\)\s*", "", line).strip()
        text = re.sub(r"\s*\[repeated .*$", "", text)
        if EXCEPTION_LINE.match(text):
            return text
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1] if tail else "no output"


def write_config(path: Path, config: dict) -> Path:
    """Write a run config atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)
    return path
