"""Trainer tests share one dataset cache, so the demo corpus is built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def trainer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """$POLYPYTHIA_CACHE for the trainer tests (kept if the caller set one, to reuse a corpus)."""
    cache = os.environ.get("POLYPYTHIA_CACHE") or str(tmp_path_factory.mktemp("cache"))
    defaults = {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": f"{cache}/torch_extensions"}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("POLYPYTHIA_CACHE", cache)
        for name, value in defaults.items():
            env.setenv(name, os.environ.get(name, value))
        yield cache
