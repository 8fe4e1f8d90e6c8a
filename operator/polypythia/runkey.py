"""The one identity of a run: every metric label, status row and file names it the same way.

A run is (size, seed[, init]) of a sweep; its name (``planner.run_name``) is unique
within the sweep. Two runs that differ only by init must never share a metric
series or a status row, so every per-run label set carries the init and the name.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INIT = "pythia"


@dataclass(frozen=True)
class RunKey:
    """Who a run is: sweep, size, seed, init strategy name, and its unique run name."""

    sweep: str
    size: str
    seed: int
    init: str
    name: str

    def labels(self, namespace: str) -> dict[str, str]:
        """Prometheus label values of the run (every per-run series carries them)."""
        return {
            "namespace": namespace,
            "sweep": self.sweep,
            "size": self.size,
            "seed": str(self.seed),
            "init": self.init,
            "run": self.name,
        }
