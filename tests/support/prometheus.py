"""A real Prometheus server (Debian package) for integration tests.

``PrometheusServer(target="127.0.0.1:PORT", rule_files=[...])`` writes a temporary
config that scrapes the target every ``scrape_interval`` and evaluates rules as
often, starts ``prometheus`` on a free loopback port and waits until it is ready.
Use it as a context manager; ``query`` and ``alerts`` call the HTTP API.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from support.processes import terminate
from support.waiting import wait_for


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` (same Debian package) and return its completed process."""
    binary = shutil.which("promtool")
    if binary is None:
        raise RuntimeError(
            "promtool not installed: apt-get install -y --no-install-recommends prometheus"
        )
    return subprocess.run(
        [binary, *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


class PrometheusServer:
    """One Prometheus process with its own temp data dir; stopped on exit."""

    def __init__(
        self,
        target: str,
        rule_files: list[str | Path] = (),  # type: ignore[assignment]
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError(
                "prometheus not installed: apt-get install -y --no-install-recommends prometheus"
            )
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="polypythia-prom-"))
        config = {
            "global": {
                "scrape_interval": scrape_interval,
                "evaluation_interval": evaluation_interval,
            },
            "rule_files": [str(Path(r).resolve()) for r in rule_files],
            "scrape_configs": [
                {"job_name": "polypythia", "static_configs": [{"targets": [target]}]}
            ],
        }
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        self._log = open(self._dir / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self._dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after 30 s: {self.log()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        terminate(self._proc)
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self) -> str:
        path = self._dir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector."""
        return self._get("/api/v1/query", query=expr)["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing)."""
        return self._get("/api/v1/alerts")["alerts"]

    def wait_for(self, check: Any, timeout: float = 30.0, interval: float = 0.5) -> Any:
        """Poll ``check()`` until it returns something truthy; return it."""
        return wait_for(
            "the Prometheus condition",
            check,
            timeout,
            lambda: self.log()[-1500:],
            interval=interval,
            log_name="prometheus log",
        )
