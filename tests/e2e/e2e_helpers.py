"""What the end-to-end tests share: a sweep file, the `polypythia run` command, its env."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml


def write_sweep(folder: Path, name: str, spec: dict) -> Path:
    """A PolyPythiaSweep YAML file named ``<name>.yaml`` with ``spec``."""
    path = folder / f"{name}.yaml"
    sweep = {
        "apiVersion": "polypythia.io/v1alpha1",
        "kind": "PolyPythiaSweep",
        "metadata": {"name": name},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(sweep))
    return path


def command(sweep: Path, workdir: Path, *extra: str, metrics_port: int = 0) -> list[str]:
    """`polypythia run` as a user types it."""
    return [
        sys.executable, "-m", "polypythia.cli", "run", str(sweep),
        "--workdir", str(workdir), "--metrics-port", str(metrics_port), *extra,
    ]  # fmt: skip


def env(cache: Path) -> dict[str, str]:
    """Offline, with the dataset cache inside the test's folder."""
    return {**os.environ, "POLYPYTHIA_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
