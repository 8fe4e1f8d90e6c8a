"""`polypythia operator` as a child process, run as in a pod: shared by the emulator harness
(tests/k8s) and the real-control-plane harness (tests/cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def operator_env(kubeconfig: str | Path, s3_url: str, **extra: str) -> dict[str, str]:
    """The operator's environment: this checkout's packages, the test images, S3 by URL and
    no AWS credentials from the machine (storage is read with the sweep's or the operator's)."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / p) for p in ("operator", "trainer_image", "eval_image")
        ),
        "POLYPYTHIA_S3_ENDPOINT": s3_url,
        **extra,
    }
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    return env


def spawn_operator(env: dict[str, str], log: Path, poll_interval: float) -> subprocess.Popen:
    """Watch every namespace; metrics and liveness ports off; output appended to ``log``."""
    argv = [sys.executable, "-m", "polypythia.cli", "operator", "--all-namespaces"]
    argv += ["--poll-interval", str(poll_interval), "--metrics-port", "0", "--liveness-port", "0"]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def kill_operator(proc: subprocess.Popen | None) -> None:
    """SIGKILL: no clean shutdown, as when the operator's node dies."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def stop_operator(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
