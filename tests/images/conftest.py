"""Image tests: the Dockerfile checks run with every test run; the tests marked `images`
start the built images and run only under `make test-images` (POLYPYTHIA_IMAGE_TESTS=1),
which builds the missing images first."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("POLYPYTHIA_IMAGE_TESTS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "images: starts the built images (make test-images); deselected otherwise"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    deselected = [item for item in items if item.get_closest_marker("images")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("images")]
