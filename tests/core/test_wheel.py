"""The project wheel, installed away from the repository, validates and plans a sweep.

The CRD ships inside the package; nothing is found through the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_installed_wheel_validates_a_sweep_outside_the_repository(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", ".cluster", "tests", "*.egg-info", "build"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("polypythia-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    shutil.rmtree(source)
    sweep = tmp_path / "sweep.yaml"
    shutil.copyfile(ROOT / "manifests" / "examples" / "sweep-tiny.yaml", sweep)
    env = {k: v for k, v in os.environ.items() if k != "POLYPYTHIA_CRD"}
    env["PYTHONPATH"] = str(site)
    probe = (
        "import polypythia, polypythia.crd as c, sys; "
        "print(polypythia.__file__); print(c.crd_path()); "
        "from polypythia.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, "validate", str(sweep)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    package_file, crd_file, *_ = proc.stdout.splitlines()
    assert package_file.startswith(str(site)) and crd_file.startswith(str(site))
    bad = tmp_path / "bad.yaml"
    bad.write_text(sweep.read_text().replace("maxConcurrentRuns:", "maxConcurrentRunz:"))
    refused = subprocess.run(
        [sys.executable, "-c", probe, "validate", str(bad)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "maxConcurrentRunz" in refused.stderr
