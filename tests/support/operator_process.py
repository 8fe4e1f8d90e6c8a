"""`polypythia operator` as a child process, run as in a pod: shared by the emulator harness
(tests/k8s) and the real-control-plane harness (tests/cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support.processes import terminate

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


class OperatorChild:
    """The operator child process of a test cluster: spawned, killed as when its node dies or
    stopped as on a rollout, and its log read for failure messages. A harness mixes it in and
    sets ``log`` (the file the child's output is appended to)."""

    log: Path
    operator: subprocess.Popen | None = None

    def spawn_operator(self, env: dict[str, str], poll_interval: float) -> None:
        """Watch every namespace; metrics and liveness ports off; output appended to ``log``."""
        argv = [sys.executable, "-m", "polypythia.cli", "operator", "--all-namespaces"]
        argv += ["--poll-interval", str(poll_interval), "--metrics-port", "0"]
        argv += ["--liveness-port", "0"]
        with self.log.open("ab") as out:
            self.operator = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill_operator(self) -> None:
        """SIGKILL: no clean shutdown, as when the operator's node dies."""
        proc, self.operator = self.operator, None
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop_operator(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        proc, self.operator = self.operator, None
        terminate(proc, grace_s=15)

    def operator_log(self) -> str:
        """The end of the operator's output (what a failing test shows)."""
        return self.log.read_text(errors="replace")[-8000:] if self.log.exists() else ""
