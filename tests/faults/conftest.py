"""Fault-injection tests: each damaged, killed, doubled or starved run ends with the
result of an undisturbed run, or with a refusal that says why; never with two truths.

Storage faults run against both back-ends: a local directory and a real S3 server.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.fixtures import s3_endpoint  # noqa: F401  (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))


@pytest.fixture(params=["local", "s3"])
def run_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where one run lives: a local folder or a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "store" / "t" / "t-nano-s0")
    return request.getfixturevalue("s3_endpoint").uri + "/data/t/t-nano-s0"
