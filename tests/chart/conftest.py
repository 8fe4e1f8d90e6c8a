"""Fixtures of the chart tests: a rendered-ready copy of the chart (see chartkit)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from chartkit import CHART, STAND_INS


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart, with stand-ins for files other parts have not written yet."""
    target = tmp_path_factory.mktemp("chart") / "polypythia"
    shutil.copytree(CHART, target)
    for name, text in STAND_INS.items():
        if not (CHART / name).exists():
            (target / name).write_text(text, encoding="utf-8")
    return target


@pytest.fixture(scope="session")
def chart(chart_dir: Path):
    import helm_python

    with helm_python.Chart.load(chart_dir) as loaded:
        yield loaded
